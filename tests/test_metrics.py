"""mbt_core.train.metrics against scikit-learn (the oracle) and closed forms."""
import math
import warnings

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score, top_k_accuracy_score

from mbt_core.train import metrics


def _multilabel(seed, n=60, c=7, levels=None):
    """Random multi-label scores (ties when `levels` is set) and targets with positives in every class."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (n, c)).astype(float) if levels else rng.normal(size=(n, c))
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[0] = 1  # every class has a positive...
    targets[1] = 0  # ...and a negative
    return scores, targets


@pytest.mark.parametrize("seed,levels", [(0, None), (1, 3), (2, 5), (3, 2)])
def test_ap_and_auc_match_sklearn_with_ties(seed, levels):
    scores, targets = _multilabel(seed, levels=levels)
    ap = metrics.average_precision_per_class(scores, targets)
    auc = metrics.auc_per_class(scores, targets)
    for c in range(scores.shape[1]):
        assert ap[c] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)
        assert auc[c] == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]), abs=1e-12)
    assert metrics.mean_average_precision(scores, targets) == pytest.approx(
        average_precision_score(targets, scores, average="macro"), abs=1e-12)
    assert metrics.mean_auc(scores, targets) == pytest.approx(roc_auc_score(targets, scores, average="macro"), abs=1e-12)


def test_perfect_ranking_and_closed_forms():
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]])
    scores = targets + 0.1 * np.arange(5)[:, None] / 5  # positives always above negatives
    assert metrics.mean_average_precision(scores, targets) == 1.0
    assert metrics.mean_auc(scores, targets) == 1.0
    assert metrics.d_prime(0.5) == 0.0
    assert metrics.d_prime(1.0) == math.inf
    assert metrics.d_prime(0.8) == pytest.approx(math.sqrt(2) * 0.8416212335729143)
    # Ranked labels 1 0 1 0 1: precision at each positive 1, 2/3, 3/5.
    ap = metrics.average_precision_per_class([5.0, 4, 3, 2, 1], [1, 0, 1, 0, 1])
    assert ap[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # All scores tied: one threshold, AP = positive rate, AUC = 1/2.
    assert metrics.average_precision_per_class(np.zeros(4), [1, 0, 0, 0])[0] == pytest.approx(0.25)
    assert metrics.auc_per_class(np.zeros(4), [1, 0, 0, 0])[0] == pytest.approx(0.5)


def test_classes_without_positives_are_excluded_and_counted():
    scores, targets = _multilabel(4, c=6)
    targets[:, [1, 4]] = 0
    ap = metrics.average_precision_per_class(scores, targets)
    assert np.isnan(ap[[1, 4]]).all() and not np.isnan(ap[[0, 2, 3, 5]]).any()
    report = metrics.map_report(scores, targets)
    assert report["excluded"].tolist() == [1, 4] and report["num_excluded"] == 2
    assert report["positive_rate"][[1, 4]].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(report["positive_rate"], targets.mean(0))
    kept = [0, 2, 3, 5]
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in kept])
    assert report["mAP"] == pytest.approx(expected, abs=1e-12)  # not (sum of kept) / 6, not NaN
    with pytest.warns(metrics.ExcludedClassesWarning, match="2 of 6 classes excluded"):
        assert metrics.mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)
    # A class with only positives has an AP (1.0) but no AUC.
    targets[:, 2] = 1
    report = metrics.map_report(scores, targets)
    assert report["ap"][2] == 1.0 and report["auc_excluded"].tolist() == [1, 2, 4]
    with pytest.warns(metrics.ExcludedClassesWarning, match="3 of 6"):
        metrics.mean_auc(scores, targets)


def test_no_warning_when_every_class_has_positives():
    scores, targets = _multilabel(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.mean_average_precision(scores, targets)
        metrics.mean_auc(scores, targets)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="targets"):
        metrics.mean_average_precision(np.zeros((3, 2)), np.full((3, 2), 2))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.mean_auc(np.full((2, 1), np.nan), np.array([[0], [1]]))
    with pytest.raises(ValueError, match="labels"):
        metrics.top_k_accuracy(np.zeros((2, 3)), [0, 3])


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("levels", [None, 3])
def test_top_k_matches_sklearn_with_ties(k, levels):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, levels, (80, 6)).astype(float) if levels else rng.normal(size=(80, 6))
    labels = rng.integers(0, 6, 80)
    expected = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(6))
    assert metrics.top_k_accuracy(scores, labels, k) == pytest.approx(expected)


def _naive_epic(verb_scores, noun_scores, verb_labels, noun_labels, k):
    """Action top-k from the full outer product of softmax probabilities, ranked by sklearn."""
    pv, pn = softmax(verb_scores, axis=1), softmax(noun_scores, axis=1)
    actions = (pv[:, :, None] * pn[:, None, :]).reshape(len(pv), -1)
    return top_k_accuracy_score(verb_labels * pn.shape[1] + noun_labels, actions, k=k, labels=np.arange(actions.shape[1]))


@pytest.mark.parametrize("k", [1, 5])
def test_epic_matches_outer_product_oracle(k):
    rng = np.random.default_rng(10 + k)
    n, v, m = 300, 8, 12
    verb_scores, noun_scores = 2 * rng.normal(size=(n, v)), 2 * rng.normal(size=(n, m))
    verb_labels, noun_labels = rng.integers(0, v, n), rng.integers(0, m, n)
    out = metrics.epic_action_accuracy(verb_scores, noun_scores, verb_labels, noun_labels, k=k, chunk=64)
    assert out["verb"] == pytest.approx(top_k_accuracy_score(verb_labels, verb_scores, k=k, labels=np.arange(v)))
    assert out["noun"] == pytest.approx(top_k_accuracy_score(noun_labels, noun_scores, k=k, labels=np.arange(m)))
    assert out["action"] == pytest.approx(_naive_epic(verb_scores, noun_scores, verb_labels, noun_labels, k))
    if k == 1:
        both = (verb_scores.argmax(1) == verb_labels) & (noun_scores.argmax(1) == noun_labels)
        assert out["action"] == pytest.approx(both.mean())


def test_epic_action_top_k_is_not_independent_top_k():
    # Verb 1 and noun 1 are each second best (in the top 2), but the pair (1, 1) ranks 4th among
    # actions: (0,0) .25 > (0,1) = (1,0) .245 > (1,1) .2401.
    p = np.log([[0.5, 0.49, 0.01]])
    out = metrics.epic_action_accuracy(p, p, np.array([1]), np.array([1]), k=2)
    assert out == {"verb": 1.0, "noun": 1.0, "action": 0.0}
    assert metrics.epic_action_accuracy(p, p, np.array([1]), np.array([1]), k=4)["action"] == 1.0


# Four clips, three verbs and three nouns, given as probabilities; the expected accuracies are worked out by hand
# from the outer products p_v p_n (9 actions per clip):
#   A: true (1, 0); actions .30 (0,0) > .18 (1,0) > .15 > ...      -> verb 2nd, noun 1st, action 2nd
#   B: true (1, 2); verb .7 and noun .8 both first                   -> every rank 1st
#   C: true (2, 2); p = (.4, .35, .25) for both, (2,2) = .0625 last   -> verb 3rd, noun 3rd, action 9th
#   D: true (1, 1); p = (.5, .4, .1) for both: .25 > .20 = .20 > .16  -> verb 2nd, noun 2nd, action 4th
HAND_VERBS = np.array([[.5, .3, .2], [.2, .7, .1], [.4, .35, .25], [.5, .4, .1]])
HAND_NOUNS = np.array([[.6, .3, .1], [.1, .1, .8], [.4, .35, .25], [.5, .4, .1]])
HAND_LABELS = np.array([1, 1, 2, 1]), np.array([0, 2, 2, 1])
HAND_EXPECTED = {1: {"verb": 1 / 4, "noun": 2 / 4, "action": 1 / 4},
                 2: {"verb": 3 / 4, "noun": 3 / 4, "action": 2 / 4},
                 5: {"verb": 1.0, "noun": 1.0, "action": 3 / 4}}


@pytest.mark.parametrize("k", [1, 2, 5])
def test_epic_accuracy_on_a_hand_computed_case(k):
    got = metrics.epic_action_accuracy(np.log(HAND_VERBS), np.log(HAND_NOUNS), *HAND_LABELS, k=k)
    assert got == pytest.approx(HAND_EXPECTED[k])


def test_multi_head_report_gives_verb_noun_and_action_top_k_by_hand():
    from mbt_core.train.evaluate import evaluation_report

    logits = np.log(np.hstack([HAND_VERBS, HAND_NOUNS]))  # the heads side by side, as predict returns them
    targets = np.hstack([np.eye(3)[HAND_LABELS[0]], np.eye(3)[HAND_LABELS[1]]]).astype(np.float32)
    classes = [f"verb:{i}" for i in range(3)] + [f"noun:{i}" for i in range(3)]
    report = evaluation_report({"fused": logits, "rgb": logits}, targets, classes, "multi_head",
                               heads={"verb": 3, "noun": 3})
    for part in (report, report["per_modality"]["rgb"]):
        assert {k: part[k] for k in ("verb_top1", "noun_top1", "action_top1", "verb_top5", "noun_top5",
                                     "action_top5")} == pytest.approx(
            {"verb_top1": 1 / 4, "noun_top1": 2 / 4, "action_top1": 1 / 4, "verb_top5": 1.0, "noun_top5": 1.0,
             "action_top5": 3 / 4})
    # Per-class AP of each head's softmax: verb 1 is the true verb of A, B, D, ranked B (.7), D (.4), C (.35), A (.3):
    # precisions 1, 1, 3/4 at the three positives.
    assert report["per_class_ap"]["verb:1"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    unlabelled = targets.copy()
    unlabelled[3, 3:] = 0  # clip D without its noun
    with pytest.raises(ValueError, match="1 clip.*no noun label"):
        evaluation_report({"fused": logits}, unlabelled, classes, "multi_head", heads={"verb": 3, "noun": 3})
