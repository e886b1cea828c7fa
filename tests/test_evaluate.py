"""Evaluation: view averaging equals the mean of per-view logits; the report agrees with sklearn."""
import jax
import numpy as np
import pytest
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
