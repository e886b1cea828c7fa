"""Training: losses and schedule against closed forms, one step on mock data, SIGKILL resume, guards."""
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbt_core.data.cache import CachedSplit
from mbt_core.data.pipeline import TrainIterator
from mbt_core.recipes import RECIPES, TrainConfig, load_run_config
from mbt_core.train.loop import NonFiniteLossError, TrainData, init_state, make_train_step, train_and_evaluate
from mbt_core.train.losses import classification_loss, mbt_loss
from mbt_core.train.optim import learning_rate_schedule, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def mock_split(config, n=16, seed=0, classes=5, windows=1):
    """An in-memory tokenised split with random frames and spectrograms, and random multi-hot labels."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, windows, *config.input_shape("rgb")), dtype=np.uint8)
    spec = rng.normal(size=(n, windows, config.spec_frames, config.mel_bins)).astype(np.float32)
    split = CachedSplit(frames, spec, np.zeros(n, bool), np.zeros(n, bool))
    labels = (rng.random((n, classes)) < 0.4).astype(np.float32)
    return split, labels, [f"clip{i}" for i in range(n)]


def micro_run(**train):
    base = dict(steps=6, batch_size=4, optimizer="adamw", learning_rate=1e-3, mixup_alpha=0.0,
                spec_augment=False, frame_augment=False, log_every=1, checkpoint_every=2, warmup_epochs=0.5)
    return load_run_config("synthetic-tiny", ["model.preset='micro'", *[f"train.{k}={v!r}" for k, v in
                                                                            {**base, **train}.items()]])


def test_losses_match_closed_forms():
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(4, 3)).astype(np.float32), (rng.random((4, 3)) < 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(-1).mean()
    assert float(classification_loss(logits, targets, "multi_label")) == pytest.approx(bce, rel=1e-5)
    onehot = np.eye(3)[[0, 2, 1, 1]]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(classification_loss(logits, onehot, "single_label")) == pytest.approx(-(onehot * logp).sum(-1).mean(),
                                                                                       rel=1e-5)
    smoothed = onehot * 0.9 + 0.1 / 3
    assert float(classification_loss(logits, onehot, "single_label", 0.1)) == pytest.approx(
        -(smoothed * logp).sum(-1).mean(), rel=1e-5)
    heads = {"verb": logits, "noun": logits[:, :2]}
    labels = {"verb": onehot, "noun": np.eye(2)[[0, 1, 1, 0]]}
    # The two-head loss is the heads' mean (the official EPIC trainer), here from the closed form per head.
    noun_logp = logits[:, :2] - np.log(np.exp(logits[:, :2]).sum(-1, keepdims=True))
    want = (-(onehot * logp).sum(-1).mean() - (labels["noun"] * noun_logp).sum(-1).mean()) / 2
    assert float(classification_loss(heads, labels, "multi_head")) == pytest.approx(want, rel=1e-5)
    concatenated = np.concatenate([labels["verb"], labels["noun"]], -1)  # as Dataset.labels gives them
    assert float(classification_loss(heads, concatenated, "multi_head")) == pytest.approx(want, rel=1e-5)
    # Multi-label smoothing as Scenic: y (1 - s) + s / C, here C = 3.
    target = targets * 0.8 + 0.2 / 3
    smoothed_bce = -(target * np.log(p) + (1 - target) * np.log(1 - p)).sum(-1).mean()
    assert float(classification_loss(logits, targets, "multi_label", 0.2)) == pytest.approx(smoothed_bce, rel=1e-5)
    with pytest.raises(ValueError, match="label_type"):
        classification_loss(logits, targets, "ranking")


def test_per_modality_loss_uses_each_modality_mixed_labels():
    rng = np.random.default_rng(1)
    aux = {"per_modality": {m: rng.normal(size=(2, 3)).astype(np.float32) for m in ("spec", "rgb")}}
    batch = {"labels": np.ones((2, 3)), "labels_spec": np.zeros((2, 3)), "labels_rgb": np.ones((2, 3))}
    got = mbt_loss(None, aux, batch, "multi_label")
    want = (classification_loss(aux["per_modality"]["spec"], np.zeros((2, 3)), "multi_label")
            + classification_loss(aux["per_modality"]["rgb"], np.ones((2, 3)), "multi_label")) / 2
    assert float(got) == pytest.approx(float(want))
    mean_logits = (aux["per_modality"]["spec"] + aux["per_modality"]["rgb"]) / 2
    assert float(mbt_loss(mean_logits, aux, batch, "multi_label", per_modality=False)) == pytest.approx(
        float(classification_loss(mean_logits, np.ones((2, 3)), "multi_label")))


def test_schedule_warmup_then_cosine_and_clipping():
    train = TrainConfig(steps=100, learning_rate=0.5, warmup_epochs=2.5)
    schedule = learning_rate_schedule(train, steps_per_epoch=4)  # 10 warmup steps
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.25)
    assert float(schedule(10)) == pytest.approx(0.5)
    assert float(schedule(55)) == pytest.approx(0.25, abs=1e-6)  # half way through the cosine
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
    tx = make_optimizer(TrainConfig(steps=100, learning_rate=1.0, momentum=0.0, warmup_epochs=0.0, grad_clip_norm=1.0),
                        steps_per_epoch=4)
    grads = {"w": jnp.asarray([30.0, 40.0])}
    updates, _ = tx.update(grads, tx.init(grads), grads)
    assert float(optax.tree.norm(updates)) <= 1.0 + 1e-6


def test_paper_recipe_counts_epochs():
    run = load_run_config("paper")
    assert (run.train.epochs, run.train.warmup_epochs) == (50.0, 2.5)
    assert run.data.normalise_spec  # standardised with the training split's statistics
    # AudioSet-balanced-sized split: 20,000 clips of batch 64 -> 312 steps an epoch, 15,600 steps.
    resolved = run.resolve_epochs(20_000 // 64)
    assert resolved.train.steps == 15_600 and resolved.train.epochs == 50.0
    assert load_run_config("paper", ["train.epochs=0.5"]).resolve_epochs(3).train.steps == 2  # ceil(1.5)
    assert load_run_config("synthetic-tiny").resolve_epochs(3).train.steps == 400  # steps count, no epochs
    with pytest.raises(ValueError, match="train.epochs"):
        load_run_config("paper", ["train.epochs=0"])


def test_paper_recipe_values():
    run = load_run_config("paper")
    assert (run.train.optimizer, run.train.learning_rate, run.train.momentum, run.train.batch_size) == ("sgd", 0.5, 0.9, 64)
    assert (run.train.warmup_epochs, run.train.grad_clip_norm, run.train.mixup_alpha) == (2.5, 1.0, 0.3)
    assert run.train.modality_mixup and run.model.stochastic_depth == 0.3 and run.model.hidden_size == 768
    tiny = load_run_config("synthetic-tiny", ["model.fusion_layer=2", "train.steps=7"])
    assert tiny.model.num_layers >= 2 and tiny.model.fusion_layer == 2 and tiny.train.steps == 7
    assert not RECIPES["synthetic-tiny"]["train"]["modality_mixup"]
    with pytest.raises(ValueError, match="steps_total"):
        load_run_config("synthetic-tiny", ["train.steps_total=3"])
    with pytest.raises(ValueError, match="section"):
        load_run_config("synthetic-tiny", ["steps=3"])


def test_one_training_step_on_mock_data():
    run = micro_run()
    split, labels, _ = mock_split(run.model)
    state, tx = init_state(run, 4)
    step = jax.jit(make_train_step(run, tx, "multi_label"))
    batch = {"rgb": split.example(0)["rgb"][None].repeat(4, 0), "spec": split.spec[:4, 0], "labels": labels[:4]}
    new, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and int(new.step) == 1
    new, _ = step(new, batch)  # The warmup starts from a learning rate of 0.
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.params, new.params)
    assert sum(jax.tree_util.tree_leaves(changed)) > len(jax.tree_util.tree_leaves(changed)) // 2
    # Repeated steps on one batch lower its loss.
    losses = []
    for _ in range(5):
        new, metrics = step(new, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]


def test_non_finite_loss_stops_with_step_and_clip_ids(tmp_path):
    run = micro_run(steps=4)
    split, labels, ids = mock_split(run.model)
    split.spec[:] = np.nan
    it = TrainIterator(split, labels, run)
    with pytest.raises(NonFiniteLossError, match=r"step 0.*clip"):
        train_and_evaluate(run, tmp_path, TrainData(it, "multi_label", 4), progress=False)
    assert (tmp_path / "checkpoints" / "0").exists()


def test_batch_not_divisible_across_devices_is_named():
    from mbt_core.train.loop import data_mesh, shard_batch
    mesh = data_mesh()
    if mesh.devices.size == 1:
        batch = {"x": np.zeros((3, 2))}
        assert shard_batch(batch, mesh)["x"].shape == (3, 2)
    script = textwrap.dedent("""
        import numpy as np
        from mbt_core.train.loop import data_mesh, shard_batch
        try:
            shard_batch({"x": np.zeros((3, 2))}, data_mesh())
        except ValueError as e:
            print("ERR", e)
    """)
    out = _run_devices(script, 2)
    assert "cannot be split across 2 devices" in out


@functools.cache
def _collective_timeout_flag() -> str:
    """A long CPU collective timeout (slow shared runners), where this jaxlib knows the flag (0.7.2 aborts on it)."""
    flag = "--xla_cpu_collective_call_terminate_timeout_seconds=600"
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, timeout=120,
                           env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flag))
    return flag if probe.returncode == 0 else ""


def _run_devices(script: str, devices: int, timeout: int = 300) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {_collective_timeout_flag()}")
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout,
                         cwd=ROOT)
    assert got.returncode == 0, got.stderr[-3000:]
    return got.stdout


def test_data_parallel_step_equals_single_device():
    script = textwrap.dedent("""
        import jax, numpy as np, sys
        sys.path.insert(0, "tests")
        from jax.sharding import Mesh
        from test_train import micro_run, mock_split
        from mbt_core.train.loop import init_state, make_train_step, shard_batch
        run = micro_run(batch_size=8)
        split, labels, _ = mock_split(run.model, n=8)
        batch = {"rgb": np.stack([split.example(i)["rgb"] for i in range(8)]), "spec": split.spec[:, 0],
                 "labels": labels}
        outs = []
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = Mesh(np.asarray(devices), ("data",))
            state, tx = init_state(run, 4)
            new, metrics = jax.jit(make_train_step(run, tx, "multi_label"))(state, shard_batch(batch, mesh))
            outs.append((float(metrics["loss"]), jax.device_get(new.params)))
        assert len(jax.devices()) == 4
        (l1, p1), (l4, p4) = outs
        diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4)))
        print("RESULT", l1, l4, diff)
    """)
    out = _run_devices(script, 4)
    _, l1, l4, diff = next(line for line in out.splitlines() if line.startswith("RESULT")).split()
    assert float(l1) == pytest.approx(float(l4), rel=1e-5)
    assert float(diff) < 1e-5


def slow_fit(out, slow, windows=1, synchronous=True, **train):
    """Train `micro_run(**train)` on a mock split into `out`, each batch `slow` seconds late (time to stop it)."""
    run = micro_run(**train).replace(data={"synchronous": synchronous})
    split, labels, _ = mock_split(run.model, n=10, windows=windows)
    it = TrainIterator(split, labels, run)

    class Slow:
        get_state, set_state = it.get_state, it.set_state

        def __iter__(self):
            return self

        def __next__(self):
            time.sleep(slow)
            return next(it)

    return train_and_evaluate(run, out, TrainData(Slow(), "multi_label", 2), progress=False)


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from test_train import slow_fit
    slow_fit(sys.argv[1], float(sys.argv[2]), windows=3, synchronous=False,  # random windows, one per modality
             steps=12, checkpoint_every=3, mixup_alpha=0.3, modality_mixup=True, spec_augment=True,
             frame_augment=True, log_every=1)
""")


def _final_params(run_dir):
    from mbt_core.experiment import load_params
    return jax.device_get(load_params(run_dir)[1])


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(straight), "0"], check=True, cwd=ROOT, env=env, timeout=600)
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.3"], cwd=ROOT, env=env)
    log = killed / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and any(json.loads(line)["step"] >= 7 for line in log.read_text().splitlines() if line):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_logged = [json.loads(line)["step"] for line in log.read_text().splitlines() if line]
    assert max(steps_logged) < 12
    subprocess.run([sys.executable, str(script), str(killed), "0"], check=True, cwd=ROOT, env=env, timeout=600)
    a, b = _final_params(straight), _final_params(killed)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if line]
    assert steps == list(range(1, 13))


def _fit_micro(out):
    run = micro_run(steps=6, checkpoint_every=2)  # checkpoints at steps 2, 4, 6 (3 kept)
    split, labels, _ = mock_split(run.model, n=10)
    train_and_evaluate(run, out, TrainData(TrainIterator(split, labels, run), "multi_label", 2), progress=False)


def _array_file(step_dir):
    """The largest array data file of a checkpoint step."""
    return max((p for p in (step_dir / "state").rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def _flip_64_bytes(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path):
    import shutil
    from mbt_core.train.checkpoint_integrity import CheckpointError

    straight = tmp_path / "straight"
    _fit_micro(straight)
    want = _final_params(straight)
    for damage in (_truncate, _flip_64_bytes):
        run_dir = tmp_path / damage.__name__
        shutil.copytree(straight, run_dir)
        _damage = _array_file(run_dir / "checkpoints" / "6")
        damage(_damage)
        with pytest.warns(UserWarning, match=r"checkpoints/6 is broken .*resuming from step 4"):
            _fit_micro(run_dir)  # trains steps 5 and 6 again from the checkpoint of step 4
        jax.tree_util.tree_map(np.testing.assert_array_equal, want, _final_params(run_dir))
        assert (run_dir / "checkpoints.broken" / "6").is_dir()  # kept for inspection, not deleted
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 7))

    # Every checkpoint damaged: one error naming the directory and each step, nothing moved.
    run_dir = tmp_path / "all"
    shutil.copytree(straight, run_dir)
    for step in (2, 4, 6):
        _flip_64_bytes(_array_file(run_dir / "checkpoints" / str(step)))
    with pytest.raises(CheckpointError, match=rf"{run_dir / 'checkpoints'}: no intact checkpoint; step 6: .*step 2"):
        _fit_micro(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "4", "6"]


def test_bfloat16_compute_keeps_float32_master_parameters():
    run = micro_run(compute_dtype="bfloat16")
    split, labels, _ = mock_split(run.model)
    state, tx = init_state(run, 4)
    batch = {"rgb": np.stack([split.example(i)["rgb"] for i in range(4)]), "spec": split.spec[:4, 0],
             "labels": labels[:4]}
    step = jax.jit(make_train_step(run, tx, "multi_label"))
    state, _ = step(state, batch)
    new, metrics = step(state, batch)
    full, full_metrics = jax.jit(make_train_step(micro_run(), tx, "multi_label"))(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(new.params))
    # bfloat16 keeps about 3 significant digits: the loss agrees with float32 to that precision.
    assert float(metrics["loss"]) == pytest.approx(float(full_metrics["loss"]), rel=2e-2)


def test_donated_step_frees_its_input_and_returns_it_unchanged_on_a_non_finite_loss():
    run = micro_run()
    split, labels, _ = mock_split(run.model)
    state, tx = init_state(run, 4)
    kept = jax.tree_util.tree_map(np.array, state)  # host copies: the device buffers are donated below
    step = jax.jit(make_train_step(run, tx, "multi_label"), donate_argnums=0)
    batch = {"rgb": np.stack([split.example(i)["rgb"] for i in range(4)]), "spec": split.spec[:4, 0],
             "labels": labels[:4]}
    bad, metrics = step(state, {**batch, "spec": np.full_like(batch["spec"], np.nan)})
    assert not np.isfinite(float(metrics["loss"]))
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(state))  # held once, not twice
    for a, b in zip(jax.tree_util.tree_leaves(bad), jax.tree_util.tree_leaves(kept)):
        np.testing.assert_array_equal(a, b)  # the guard's last good state, bit for bit
    good, metrics = step(bad, batch)
    assert np.isfinite(float(metrics["loss"])) and int(good.step) == 1


MULTI_PROCESS_SCRIPT = textwrap.dedent("""
    # One of two processes on localhost (jax.distributed, one CPU device each): train a micro run of 4 steps into
    # a shared run directory, stopping after `stop` batches (-1: never); report what this process wrote and what
    # data iterator state it was given back.
    import json, sys
    from pathlib import Path
    import jax
    pid, port, out, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=240)
    sys.path.insert(0, "tests")
    from test_train import micro_run, mock_split
    from mbt_core.data.pipeline import TrainIterator
    from mbt_core.train import loop
    written = []
    for name in ("write_config", "trim_metrics"):
        def spy(*args, _real=getattr(loop, name), _name=name):
            written.append(_name)
            return _real(*args)
        setattr(loop, name, spy)

    class Log(loop.MetricsLog):
        def __init__(self, *args):
            written.append("MetricsLog")
            super().__init__(*args)
    loop.MetricsLog = Log
    run = micro_run(steps=4, batch_size=4, checkpoint_every=2)
    split, labels, _ = mock_split(run.model, n=8)
    it = TrainIterator(split, labels, run)
    restored, served = [], []

    class Stop(Exception):
        pass

    class Recording:
        def __iter__(self):
            return self
        def __next__(self):
            if len(served) == stop:
                raise Stop
            served.append(1)
            return next(it)
        get_state = it.get_state
        def set_state(self, state):
            restored.append(state)
            it.set_state(state)
    try:
        step = int(loop.train_and_evaluate(run, out, loop.TrainData(Recording(), "multi_label", 2),
                                           progress=False).step)
    except Stop:
        step = None
    params = jax.tree_util.tree_leaves(jax.device_get(loop.restore(loop.checkpoint_manager(
        Path(out) / "checkpoints", 1), loop.init_state(run, 2)[0]).params))
    print("RESULT", json.dumps({"written": written, "restored": restored, "state": it.get_state(), "step": step,
                                "devices": jax.device_count(), "params": float(sum(abs(p).sum() for p in params))}))
""")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(script, out, stop=-1, timeout=400):
    """Run `script` as processes 0 and 1 of one jax.distributed job; their RESULT records."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=_collective_timeout_flag())
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(pid), port, str(out), str(stop)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, stderr[-3000:]
            results.append(json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT"))[7:]))
    finally:
        for proc in procs:
            proc.kill()
    return results


def test_two_processes_write_the_run_files_once_and_each_resumes_its_own_iterator(tmp_path):
    script = tmp_path / "process.py"
    script.write_text(MULTI_PROCESS_SCRIPT)
    out = tmp_path / "run"
    first = _two_processes(script, out, stop=2)  # checkpointed at step 2, stopped fetching the third batch
    assert [r["devices"] for r in first] == [2, 2] and [r["step"] for r in first] == [None, None]
    # Process 0 alone writes config.json and metrics.jsonl (one line per step, not one per process).
    assert first[0]["written"] == ["write_config", "trim_metrics", "MetricsLog"] and first[1]["written"] == []
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # Each process's iterator state is its own file in the checkpoint (grain's handler), naming its process.
    data = out / "checkpoints" / "2" / "data"
    for pid, result in enumerate(first):
        saved = json.loads((data / f"process_{pid}-of-2.json").read_text())
        assert saved == result["state"] and (saved["process_index"], saved["process_count"]) == (pid, 2)
    resumed = _two_processes(script, out)
    assert [r["restored"] for r in resumed] == [[first[0]["state"]], [first[1]["state"]]]
    assert [r["step"] for r in resumed] == [4, 4] and resumed[1]["written"] == []
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    # The same as two processes that were never stopped; both processes hold the same parameters.
    straight = _two_processes(script, tmp_path / "straight")
    assert resumed[0]["params"] == resumed[1]["params"] == straight[0]["params"]


def test_iterator_states_of_another_process_or_process_count_are_refused(tmp_path):
    from mbt_core.train.loop import check_process_count

    run = micro_run()
    split, labels, _ = mock_split(run.model, n=8)
    it = TrainIterator(split, labels, run)
    state = it.get_state()
    assert (state["process_index"], state["process_count"]) == (0, 1)
    with pytest.raises(ValueError, match="process 1 of 2 cannot continue the stream of process 0 of 1"):
        it.set_state({**state, "process_index": 1, "process_count": 2})
    data = tmp_path / "data"
    data.mkdir()
    for pid in (0, 1):
        (data / f"process_{pid}-of-2.json").write_text("{}")
    with pytest.raises(ValueError, match=r"another number of processes \(process_0-of-2.json, process_1-of-2.json\)"):
        check_process_count(data)
    (data / "process_0-of-1.json").write_text("{}")
    check_process_count(data)  # this process's file is there


def test_a_checkpoint_of_the_single_process_format_resumes_with_its_iterator_position(tmp_path):
    """Checkpoints written before per-process iterator states (the grain state as one JSON item) still resume."""
    import orbax.checkpoint as ocp

    from mbt_core.train import loop
    from mbt_core.train.checkpoint_integrity import write_checksums

    run = micro_run()
    split, labels, _ = mock_split(run.model, n=8)
    it = TrainIterator(split, labels, run)
    for _ in range(3):
        next(it)
    position, ahead = it.get_state(), next(it)
    state = init_state(run, 2)[0].replace(step=3)
    manager = loop.checkpoint_manager(tmp_path / "checkpoints", 2)
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data=ocp.args.JsonSave(position["grain"])), force=True)
    manager.wait_until_finished()
    write_checksums(tmp_path / "checkpoints" / "3")
    fresh = TrainIterator(split, labels, run)
    restored = loop.restore(loop.checkpoint_manager(tmp_path / "checkpoints", 2), init_state(run, 2)[0], fresh)
    assert int(restored.step) == 3 and fresh.get_state() == position
    jax.tree_util.tree_map(np.testing.assert_array_equal, next(fresh), ahead)
