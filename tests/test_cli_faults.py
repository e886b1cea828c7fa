"""Faults met through the `mbt` command and the training loop: a changed config on resume, errors as one line
(exit 2, no traceback), full disks, killed parents, Ctrl-C / SIGTERM, and the sweep's command line.

Process behaviour (exit status, stderr, signals, child processes) is tested on the real command in a subprocess.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mbt_core import cli, run_dir
from mbt_core.data.pipeline import TrainIterator
from mbt_core.train.loop import NonFiniteLossError, TrainData, train_and_evaluate
from test_train import ROOT, micro_run, mock_split

ENV = dict(os.environ, JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1")
MICRO = ["model.preset='micro'", "train.steps=2", "train.batch_size=4", "train.checkpoint_every=1"]


def mbt(*argv, timeout=300, cwd=ROOT):
    """The real `mbt` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "mbt_core.cli", *map(str, argv)], capture_output=True, text=True,
                          env=ENV, timeout=timeout, cwd=cwd)


def assert_one_line_error(got, command, *parts):
    """Exit status 2, no traceback, and a last stderr line `mbt <command>: ...` holding each part."""
    assert got.returncode == 2, got.stderr[-2000:]
    assert "Traceback" not in got.stderr, got.stderr[-2000:]
    line = got.stderr.strip().splitlines()[-1]  # earlier lines: progress bars
    assert line.startswith(f"mbt {command}: "), got.stderr[-2000:]
    for part in parts:
        assert part in line, line
    return line


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 synthetic clips of 2 s at 32 px (4 train, 4 val, 4 test)."""
    from mbt_core.datasets.synthetic import generate
    out = tmp_path_factory.mktemp("synth")
    generate(out, num_clips=12, seed=0, clip_seconds=2.0, size=32, workers=1, progress=False)
    return out


def fit(out, **train):
    run = micro_run(**{"steps": 4, "checkpoint_every": 2, **train})
    split, labels, _ = mock_split(run.model, n=10)
    return train_and_evaluate(run, out, TrainData(TrainIterator(split, labels, run), "multi_label", 2),
                              progress=False)


# ----- class 3: resume with a changed config -----
def test_a_changed_config_is_refused_before_anything_is_written(tmp_path):
    fit(tmp_path)
    config = (tmp_path / "config.json").read_bytes()
    steps = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    run = micro_run(steps=4, checkpoint_every=2).replace(model={"fusion_layer": 0}, train={"seed": 3})
    split, labels, _ = mock_split(run.model, n=10)
    with pytest.raises(run_dir.ConfigChangedError, match=r"model.fusion_layer: 1 -> 0; train.seed: 0 -> 3.*--restart"):
        train_and_evaluate(run, tmp_path, TrainData(TrainIterator(split, labels, run), "multi_label", 2),
                           progress=False)
    assert (tmp_path / "config.json").read_bytes() == config
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == steps
    # Cadences change no trained number: resumed, and the record says so.
    fit(tmp_path, log_every=2, checkpoint_every=4, keep_checkpoints=2)
    assert run_dir.read_config(tmp_path).train.log_every == 2
    assert [r["step"] for r in run_dir.read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert set(run_dir.MAY_DIFFER) == {"train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                                       "train.eval_every", "train.eval_views", "data.cache"}


def test_set_aside_moves_a_run_and_nothing_is_deleted(tmp_path):
    fit(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    moved = run_dir.set_aside(tmp_path)
    assert moved == tmp_path / "previous" / "1"
    assert sorted(str(p.relative_to(moved)) for p in moved.rglob("*")) == before
    assert run_dir.config_changes(tmp_path, micro_run(seed=5)) == {}  # nothing left to resume
    fit(tmp_path, seed=5)
    assert run_dir.set_aside(tmp_path) == tmp_path / "previous" / "2"
    assert run_dir.set_aside(tmp_path) is None


def test_cli_train_refuses_a_changed_config_and_restarts_on_request(data, tmp_path):
    out = tmp_path / "run"
    first = mbt("train", "--config", "synthetic-tiny", "--data", data, "--out", out, *MICRO)
    assert first.returncode == 0, first.stderr[-3000:]
    config = (out / "config.json").read_bytes()
    changed = mbt("train", "--config", "synthetic-tiny", "--data", data, "--out", out, *MICRO, "model.fusion_layer=0")
    assert_one_line_error(changed, "train", "model.fusion_layer: 1 -> 0", "--restart")
    assert (out / "config.json").read_bytes() == config
    again = mbt("train", "--config", "synthetic-tiny", "--data", data, "--out", out, *MICRO, "model.fusion_layer=0",
                "--restart")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "previous" / "1" / "config.json").read_bytes() == config
    assert sorted(p.name for p in (out / "previous" / "1" / "checkpoints").iterdir()) == ["1", "2"]
    assert run_dir.read_config(out).model.fusion_layer == 0


# ----- class 6: one line, exit 2, no traceback -----
def test_cli_errors_name_the_option_or_file(data, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    train = ["train", "--config", "synthetic-tiny", *MICRO]
    assert_one_line_error(mbt(*train, "--out", tmp_path / "r"), "train", "data.dir", "--data")
    assert_one_line_error(mbt(*train, "--data", tmp_path / "nowhere", "--out", tmp_path / "r"), "train",
                          f"data directory {tmp_path / 'nowhere'}: does not exist")
    got = mbt(*train, "--data", data, "--out", a_file)
    assert_one_line_error(got, "train", f"run directory {a_file}: exists and is not a directory")
    assert "tokenise" not in got.stderr  # refused before any tokenising (no progress bar)
    assert_one_line_error(mbt(*train, "--data", data, "--out", tmp_path / "r", "train.batch_size=64"), "train",
                          "train.batch_size 64 is larger than the 4 clips of split 'train'")
    assert_one_line_error(mbt("evaluate", tmp_path / "missing"), "evaluate",
                          f"run directory {tmp_path / 'missing'}: does not exist")
    assert_one_line_error(mbt("synth", "--out", a_file, "--num-clips", 12), "synth", "--out", "not a directory")
    debug = mbt("evaluate", tmp_path / "missing", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_is_refused_before_work(data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        got = mbt("train", "--config", "synthetic-tiny", *MICRO, "--data", data, "--out", locked / "run")
        assert_one_line_error(got, "train", f"run directory {locked / 'run'}: cannot write there")
    finally:
        locked.chmod(0o700)


def test_missing_clips_directories_and_symlink_loops_are_named_and_skipped_on_request(data, tmp_path):
    bad = tmp_path / "bad"
    (bad / "clips").mkdir(parents=True)
    for name in ("manifest.csv", "data_card.md"):
        (bad / name).write_bytes((data / name).read_bytes())
    rows = (data / "manifest.csv").read_text().splitlines()
    val = [r.split(",")[0] for r in rows[1:] if r.endswith(",val")]
    for clip in sorted((data / "clips").iterdir()):
        if clip.stem not in val[:3]:
            (bad / "clips" / clip.name).symlink_to(clip)
    (bad / "clips" / f"{val[0]}.mp4").mkdir()  # a directory where a clip should be
    (bad / "clips" / f"{val[1]}.mp4").symlink_to(bad / "clips" / f"{val[1]}.mp4")  # a loop; val[2]: missing
    got = mbt("tokenise", "--data", bad, "--splits", "val")
    assert_one_line_error(got, "tokenise", "3 of 12 clip file(s) missing", f"{val[0]}: ", "a directory",
                                 "too many levels of symbolic links", "no such file")
    skipped = mbt("tokenise", "--data", bad, "--splits", "val", "data.on_error='skip'")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "Traceback" not in skipped.stderr and "skipping 3 of 12 clip file(s) missing" in skipped.stderr
    assert "val: 1 clips x 1 view(s) cached" in skipped.stdout


def test_a_non_finite_loss_is_one_line_with_plain_clip_ids(tmp_path, capsys):
    run = micro_run(steps=4)
    split, labels, ids = mock_split(run.model)
    split.spec[:] = np.nan
    job = lambda: train_and_evaluate(run, tmp_path, TrainData(TrainIterator(split, labels, run), "multi_label", 4),
                                     progress=False)
    assert cli.guarded("train", job) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.match(r"mbt train: non-finite loss nan at step 0; clips in the batch: \d+(, \d+){3}; the last good", err)
    assert "np.str_" not in err and "'" not in err
    with pytest.raises(NonFiniteLossError):
        job()


def test_a_bug_is_an_internal_error_with_the_debug_hint(capsys):
    def bug():
        raise TypeError("unsupported operand")
    assert cli.guarded("flops", bug) == 1
    assert capsys.readouterr().err.strip() == ("mbt flops: internal error: TypeError: unsupported operand "
                                               "(run again with --debug for the traceback)")


FULL_DISK = textwrap.dedent("""
    import errno, os, sys
    import numpy as np
    from mbt_core import cli
    from mbt_core.datasets import synthetic

    def full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    command = sys.argv[1]
    if command == "synth":
        synthetic.write_video = full
    else:
        np.savez = full
    cli.main(sys.argv[1:])
""")


@pytest.mark.parametrize("command", ["synth", "tokenise"])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(data, tmp_path, command):
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    if command == "synth":
        target = tmp_path / "synth"
        argv = ["synth", "--out", target, "--num-clips", 12, "--clip-seconds", 2, "--size", 32, "--workers", 1]
    else:
        target = tmp_path / "data"
        target.mkdir()
        for name in ("manifest.csv", "data_card.md"):
            (target / name).write_bytes((data / name).read_bytes())
        (target / "clips").symlink_to(data / "clips")
        argv = ["tokenise", "--data", target, "--splits", "val"]
    got = subprocess.run([sys.executable, str(script), *map(str, argv)], capture_output=True, text=True, env=ENV,
                         timeout=300, cwd=ROOT)
    assert_one_line_error(got, command, "no space left on device", "finished work is kept")
    written = [p for p in target.rglob("*") if p.is_file() and "clips" not in p.relative_to(target).parts[:1]]
    if command == "synth":
        written += list((target / "clips").iterdir())
        assert written == []  # no clip, no manifest, no card
    else:
        assert [p.name for p in written if ".token_cache" in p.parts] == []


# ----- workers end with their parent -----
def _children(pid):
    """PIDs of the live (not zombie) child processes of `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


POOL = textwrap.dedent("""
    import sys, time
    from mbt_core.data.worker_pool import CrashSafePool
    from mbt_core.datasets.synthetic import generate

    if sys.argv[1] == "pool":
        pool = CrashSafePool(2)
        for _ in pool.map(time.sleep, [600] * 4, lambda job: None):
            pass
    else:
        generate(sys.argv[2], num_clips=4000, seed=0, workers=2, progress=False)
""")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("pool", ["pool", "synth"])
def test_workers_end_when_their_parent_is_killed(tmp_path, pool):
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    parent = subprocess.Popen([sys.executable, str(script), pool, str(tmp_path / "synth")], cwd=ROOT, env=ENV)
    try:
        deadline = time.monotonic() + 120
        workers = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.2)  # two pool workers (the resource tracker is a child too)
            workers = [c for c in _children(parent.pid) if "resource_tracker" not in
                       Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]
        assert len(workers) >= 2 and parent.poll() is None
        time.sleep(3)  # the workers are at work
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(map(_alive, workers)):
            time.sleep(0.2)
        assert not any(map(_alive, workers))
    finally:
        for pid in [parent.pid, *_children(parent.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ----- class 10: interrupts and the command line -----
INTERRUPTIBLE = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from test_train import slow_fit
    from mbt_core import cli
    out, slow = sys.argv[1], float(sys.argv[2])
    sys.exit(cli.guarded("train", lambda: slow_fit(out, slow, steps=12, checkpoint_every=5, log_every=1)))
""")


def _logged(out):
    log = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if line] if log.exists() else []


def test_sigint_and_sigterm_checkpoint_and_exit_cleanly_then_resume_exactly(tmp_path):
    script = tmp_path / "interruptible.py"
    script.write_text(INTERRUPTIBLE)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    subprocess.run([sys.executable, str(script), str(straight), "0"], check=True, cwd=ROOT, env=ENV, timeout=600)
    for sig, status, after in ((signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 7)):
        proc = subprocess.Popen([sys.executable, str(script), str(stopped), "0.3"], cwd=ROOT, env=ENV,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None and max(_logged(stopped), default=0) < after:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == status, err[-3000:]
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"mbt train: interrupted by {sig.name} at step ") and "checkpointed" in line
        step = int(line.split(" at step ")[1].split(";")[0])
        assert step in [int(p.name) for p in (stopped / "checkpoints").iterdir()]  # the step it stopped at
        assert _logged(stopped) == list(range(1, step + 1))
    subprocess.run([sys.executable, str(script), str(stopped), "0"], check=True, cwd=ROOT, env=ENV, timeout=600)
    from mbt_core.experiment import load_params
    a, b = (jax.device_get(load_params(d)[1]) for d in (straight, stopped))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert _logged(stopped) == list(range(1, 13))


def test_metrics_hold_each_step_once_without_a_checkpoint_and_after_a_cut_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')  # killed before any checkpoint
    fit(tmp_path)
    assert [r["step"] for r in run_dir.read_metrics(tmp_path)] == [1, 2, 3, 4]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record"):
        run_dir.read_metrics(tmp_path)


def _readme_commands(name):
    text = (ROOT / "README.md").read_text()
    return [shlex.split(line.split("#")[0])[1:] for line in text.splitlines() if line.startswith(f"mbt {name} ")]


def test_sweep_options_leave_the_overrides_to_the_runs():
    readme = _readme_commands("sweep")
    assert readme, "README shows an `mbt sweep` command"
    for argv in readme:
        args = cli.parse_args(argv)
        assert args.fusions == ["bottleneck", "self_attention"] and args.fusion_layers == [0, 1, 2, 3]
        with_overrides = cli.parse_args([*argv, "train.steps=50", "model.num_layers=4"])
        assert with_overrides.fusion_layers == [0, 1, 2, 3]
        assert with_overrides.overrides == ["train.steps=50", "model.num_layers=4"]
    args = cli.parse_args(["sweep", "--data", "d", "--out", "o", "--fusions", "bottleneck", "train.steps=5",
                           "--bottlenecks", "2", "4", "model.fusion_layer=1", "--", "data.workers=1"])
    assert (args.fusions, args.bottlenecks) == (["bottleneck"], [2, 4])
    assert args.overrides == ["train.steps=5", "model.fusion_layer=1", "data.workers=1"]
    for argv in _readme_commands("train"):
        args = cli.parse_args(argv)
        assert args.overrides == ["model.fusion_layer=1"] or args.overrides == ["model.fusion_layer=3"]
