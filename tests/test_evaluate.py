"""Evaluation: view averaging equals the mean of per-view logits; the report agrees with sklearn; EPIC's verb and
noun labels reach `mbt evaluate` and a sweep's results."""
import dataclasses
import functools
import shutil

import jax
import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import average_precision_score

from mbt_core import MBT, MBTConfig, dummy_inputs
from mbt_core.data.cache import CachedSplit
from mbt_core.train.evaluate import evaluation_report, predict


def test_predict_averages_logits_over_views():
    cfg = MBTConfig.preset("micro")
    rng = np.random.default_rng(0)
    n, views = 5, 3
    split = CachedSplit(rng.integers(0, 256, (n, views, *cfg.input_shape("rgb")), dtype=np.uint8),
                        rng.normal(size=(n, views, cfg.spec_frames, cfg.mel_bins)).astype(np.float32),
                        np.zeros(n, bool), np.zeros(n, bool))
    model = MBT(cfg)
    params = model.init(jax.random.PRNGKey(0), dummy_inputs(cfg, 1), train=False)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    got = predict(cfg, params, split, batch_size=2)
    for i in range(n):
        per_view = [model.apply({"params": params}, {k: v[None] for k, v in split.example(i, v).items()},
                                train=False) for v in range(views)]
        np.testing.assert_allclose(got["fused"][i], np.mean([p[0][0] for p in per_view], axis=0), atol=1e-5)
        np.testing.assert_allclose(got["rgb"][i], np.mean([p[1]["per_modality"]["rgb"][0] for p in per_view], 0),
                                   atol=1e-5)


def test_report_matches_sklearn_and_groups_kinds():
    rng = np.random.default_rng(1)
    targets = (rng.random((40, 4)) < 0.3).astype(np.float32)
    targets[:, 3] = 0  # a class without positives: excluded, named, not averaged in
    logits = rng.normal(size=(40, 4)) + 2 * targets
    classes = ["hum", "circle", "xor", "empty"]
    kinds = {"hum": "audio", "circle": "visual", "xor": "pairing", "empty": "pairing"}
    report = evaluation_report({"fused": logits, "rgb": logits[:, ::-1].copy()}, targets, classes, "multi_label", kinds)
    want = [average_precision_score(targets[:, c], logits[:, c]) for c in range(3)]
    assert report["per_class_ap"]["xor"] == pytest.approx(want[2])
    assert report["mAP"] == pytest.approx(np.mean(want))
    assert report["excluded_classes"] == ["empty"] and report["per_class_ap"]["empty"] is None
    assert report["positive_rate"]["hum"] == pytest.approx(targets[:, 0].mean())
    assert report["mAP_by_kind"] == pytest.approx({"audio": want[0], "visual": want[1], "pairing": want[2]})
    assert report["positive_rate_by_kind"]["pairing"] == pytest.approx(targets[:, 2].mean() / 2)
    assert set(report["per_modality"]) == {"rgb"} and report["num_clips"] == 40


def test_single_label_report_has_top_k():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, 30)
    targets = np.eye(6, dtype=np.float32)[labels]
    logits = rng.normal(size=(30, 6)) + 3 * targets
    report = evaluation_report({"fused": logits}, targets, [f"c{i}" for i in range(6)], "single_label")
    assert report["top1"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
    assert 0 <= report["top1"] <= report["top5"] <= 1


def _epic_data_dir(root):
    """A data directory of the real EPIC excerpt's segments within each video's first 16 s (14 clips), over
    generated 16 s videos at the EPIC layout, with the shipped EPIC card: read_epic -> write_manifest."""
    from mbt_core.datasets import read_epic, write_manifest
    from mbt_core.datasets.cards import card_path
    from mbt_core.datasets.epic import read_epic_classes
    from media import index_frames, tone, write_video
    from shared import shared_path

    epic = functools.partial(shared_path, "real_annotations", "epic_kitchens_100")
    records = [r for r in read_epic(epic("EPIC_100_validation_head300.csv"), epic("EPIC_100_verb_classes.csv"),
                                    epic("EPIC_100_noun_classes.csv")) if r.end <= 16]
    records = [dataclasses.replace(r, split="test" if i % 3 == 2 else "train") for i, r in enumerate(records)]
    (root / "P01" / "videos").mkdir(parents=True)
    for video in sorted({r.video for r in records}):
        write_video(root / "P01" / "videos" / f"{video}.MP4", index_frames(400, 32, 32), 25,
                    audio=tone(440, 16, 16000), rate=16000)
    heads = {"verb": read_epic_classes(epic("EPIC_100_verb_classes.csv")),
             "noun": read_epic_classes(epic("EPIC_100_noun_classes.csv"))}
    write_manifest(root / "manifest.csv", records, heads, "{participant}/videos/{video}.MP4")
    shutil.copy(card_path("epic"), root / "data_card.md")
    return records


def test_epic_verb_noun_labels_flow_from_read_epic_through_a_sweep_to_mbt_evaluate(tmp_path, capsys):
    from sklearn.metrics import top_k_accuracy_score

    from mbt_core import cli
    from mbt_core.experiment import sweep
    from mbt_core.recipes import load_run_config
    from mbt_core.run_dir import read_config, read_eval, read_results, read_scores

    records = _epic_data_dir(tmp_path / "epic")
    assert len(records) == 14 and sum(r.split == "test" for r in records) == 4
    base = load_run_config("synthetic-tiny", ["model.preset='micro'", "train.steps=2", "train.batch_size=4",
                                              "train.log_every=1", f"data.dir={str(tmp_path / 'epic')!r}"])
    (row,) = sweep(base, tmp_path / "sweep", [("bottleneck", 1, 2)], progress=False)
    run_dir = tmp_path / "sweep" / "bottleneck-lf1-b2"
    assert read_config(run_dir).model.heads == {"verb": 97, "noun": 300}  # the card's heads, in its order

    assert cli.main(["evaluate", str(run_dir), "--split", "test"]) is None
    printed = capsys.readouterr().out
    report, scores = read_eval(run_dir), read_scores(run_dir)
    # The targets are read_epic's verb and noun ids, the heads side by side.
    by_id = {r.clip_id: r.labels for r in records}
    assert [(int(t[:97].argmax()), int(t[97:].argmax()), int(t.sum())) for t in scores["targets"]] == [
        (by_id[c]["verb"], by_id[c]["noun"], 2) for c in scores["clip_ids"]]
    # Accuracies against sklearn on the saved logits, and the full outer product of the heads' softmax.
    logits, verbs, nouns = scores["logits"]["fused"], scores["targets"][:, :97].argmax(1), scores["targets"][:, 97:].argmax(1)
    pv, pn = softmax(logits[:, :97], axis=1), softmax(logits[:, 97:], axis=1)
    actions = (pv[:, :, None] * pn[:, None, :]).reshape(len(pv), -1)
    for k in (1, 5):
        assert report[f"verb_top{k}"] == pytest.approx(top_k_accuracy_score(verbs, logits[:, :97], k=k, labels=range(97)))
        assert report[f"noun_top{k}"] == pytest.approx(top_k_accuracy_score(nouns, logits[:, 97:], k=k, labels=range(300)))
        assert report[f"action_top{k}"] == pytest.approx(
            top_k_accuracy_score(verbs * 300 + nouns, actions, k=k, labels=range(97 * 300)))
        assert f"action_top{k} {report[f'action_top{k}']:.4f}" in printed
    # The sweep's results carry them beside mAP.
    assert read_results(tmp_path / "sweep")[0]["action_top1"] == row["action_top1"] == report["action_top1"]
    assert {"verb_top1", "verb_top5", "noun_top1", "noun_top5", "action_top5"} <= set(row)
