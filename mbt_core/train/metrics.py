"""Evaluation metrics of the paper (Sec. 4.1): mAP, AUC and d-prime (AudioSet), top-k accuracy (VGGSound,
EPIC-Kitchens verb / noun / action).

NumPy and SciPy only; every definition matches scikit-learn's (the tests use it as the oracle). Classes
without positives have no average precision: they are excluded from the mean and reported, never averaged
in as 0 or NaN.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.special import log_softmax
from scipy.stats import norm


class ExcludedClassesWarning(UserWarning):
    """Some classes had no positives (or no negatives) in the split and were left out of a mean."""


def _scores_targets(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check and return (scores, targets) as float / bool arrays of shape (N, C)."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if scores.ndim == 1:
        scores, targets = scores[:, None], targets.reshape(-1, 1)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    if scores.shape[0] == 0:
        raise ValueError("scores: no examples (N = 0)")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores: {int(np.sum(~np.isfinite(scores)))} entries are NaN or infinite")
    if not np.all((targets == 0) | (targets == 1)):
        raise ValueError(f"targets: entries must be 0 or 1, got values {np.unique(targets)[:5]}")
    return scores, targets.astype(bool)


def _ranked_counts(score: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives above each distinct score threshold, highest threshold first."""
    order = np.argsort(-score, kind="stable")
    score, target = score[order], target[order]
    # Tied scores form one threshold: keep only the last index of each run of equal scores.
    last = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(target)[last]
    return tps, (last + 1) - tps


def _average_precision(score: np.ndarray, target: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds (sklearn's definition, no interpolation)."""
    tps, fps = _ranked_counts(score, target)
    if tps[-1] == 0:
        return float("nan")
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _roc_auc(score: np.ndarray, target: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoid rule over distinct thresholds (ties count one half)."""
    tps, fps = _ranked_counts(score, target)
    if tps[-1] == 0 or fps[-1] == 0:
        return float("nan")
    tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision_per_class(scores: Any, targets: Any) -> np.ndarray:
    """Average precision of each class (C,); NaN for classes without positives."""
    scores, targets = _scores_targets(scores, targets)
    return np.array([_average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])


def auc_per_class(scores: Any, targets: Any) -> np.ndarray:
    """ROC AUC of each class (C,); NaN for classes lacking positives or negatives."""
    scores, targets = _scores_targets(scores, targets)
    return np.array([_roc_auc(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])


def d_prime(auc: float) -> float:
    """AudioSet's d-prime: sqrt(2) * Phi^-1(AUC) (infinite at AUC = 1)."""
    return float(np.sqrt(2.0) * norm.ppf(auc))


def map_report(scores: Any, targets: Any) -> dict[str, Any]:
    """mAP, mean AUC, d-prime, per-class AP / AUC, positive rates and the classes left out of each mean."""
    scores, targets = _scores_targets(scores, targets)
    ap = average_precision_per_class(scores, targets)
    auc = auc_per_class(scores, targets)
    excluded = np.flatnonzero(np.isnan(ap))
    auc_excluded = np.flatnonzero(np.isnan(auc))
    mean_ap = float(np.mean(ap[~np.isnan(ap)])) if excluded.size < ap.size else float("nan")
    mean_roc = float(np.mean(auc[~np.isnan(auc)])) if auc_excluded.size < auc.size else float("nan")
    return {
        "mAP": mean_ap,
        "mean_auc": mean_roc,
        "d_prime": d_prime(mean_roc),
        "ap": ap,
        "auc": auc,
        "excluded": excluded,  # classes without positives: not in mAP
        "num_excluded": int(excluded.size),
        "auc_excluded": auc_excluded,  # classes without positives or without negatives: not in mean AUC
        "positive_rate": targets.mean(axis=0),
        "num_classes": int(ap.size),
        "num_examples": int(scores.shape[0]),
    }


def _warn_excluded(what: str, excluded: np.ndarray, total: int) -> None:
    """Warn that `excluded` classes were left out of a mean."""
    if excluded.size:
        shown = ", ".join(map(str, excluded[:10])) + (", ..." if excluded.size > 10 else "")
        warnings.warn(f"{what}: {excluded.size} of {total} classes excluded (no positives"
                      f"{' or no negatives' if what == 'mean AUC' else ''} in this split): {shown}",
                      ExcludedClassesWarning, stacklevel=3)


def mean_average_precision(scores: Any, targets: Any) -> float:
    """Mean over classes of average precision; warns with the count of classes excluded for lack of positives."""
    report = map_report(scores, targets)
    _warn_excluded("mAP", report["excluded"], report["num_classes"])
    return report["mAP"]


def mean_auc(scores: Any, targets: Any) -> float:
    """Mean ROC AUC over classes with both positives and negatives; warns with the count of the others."""
    auc = auc_per_class(scores, targets)
    excluded = np.flatnonzero(np.isnan(auc))
    _warn_excluded("mean AUC", excluded, auc.size)
    return float(np.mean(auc[~np.isnan(auc)])) if excluded.size < auc.size else float("nan")


def _labels(labels: Any, n: int, num_classes: int, name: str) -> np.ndarray:
    """Check integer class ids of shape (n,) in 0..num_classes-1."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class ids, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name}: class ids must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels


def _top_k_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per example: is the true class among the k best? Ties rank the higher class id first, as sklearn does."""
    true = np.take_along_axis(scores, labels[:, None], axis=1)
    ids = np.arange(scores.shape[1])
    ahead = (scores > true) | ((scores == true) & (ids > labels[:, None]))
    return ahead.sum(axis=1) < k


def _checked_scores(scores: Any, name: str) -> np.ndarray:
    """Check scores of shape (N, C) with finite entries."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (N, C), got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name}: {int(np.sum(~np.isfinite(scores)))} entries are NaN or infinite")
    return scores


def top_k_accuracy(scores: Any, labels: Any, k: int = 1) -> float:
    """Fraction of examples whose true class is among the k highest scores (sklearn's top_k_accuracy_score)."""
    scores = _checked_scores(scores, "scores")
    labels = _labels(labels, scores.shape[0], scores.shape[1], "labels")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(np.mean(_top_k_hits(scores, labels, k)))


def epic_action_accuracy(verb_scores: Any, noun_scores: Any, verb_labels: Any, noun_labels: Any,
                         k: int = 1, chunk: int = 256) -> dict[str, float]:
    """EPIC-Kitchens verb, noun and action top-k accuracy (Sec. 4.1).

    Action top-1: both the verb and the noun argmax are right. Action top-k (k > 1): actions are ranked by
    the outer product of the verb and noun softmax probabilities, as the EPIC-KITCHENS C1 evaluation does.
    """
    verb_scores, noun_scores = _checked_scores(verb_scores, "verb_scores"), _checked_scores(noun_scores, "noun_scores")
    n, num_verbs = verb_scores.shape
    if noun_scores.shape[0] != n:
        raise ValueError(f"noun_scores has {noun_scores.shape[0]} examples, verb_scores {n}")
    num_nouns = noun_scores.shape[1]
    verb_labels = _labels(verb_labels, n, num_verbs, "verb_labels")
    noun_labels = _labels(noun_labels, n, num_nouns, "noun_labels")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    verb_hits, noun_hits = _top_k_hits(verb_scores, verb_labels, k), _top_k_hits(noun_scores, noun_labels, k)
    if k == 1:
        action_hits = verb_hits & noun_hits
    else:
        # log p_v + log p_n ranks actions as p_v * p_n does, without underflow; chunks bound memory (N x V x N).
        log_pv, log_pn = log_softmax(verb_scores, axis=1), log_softmax(noun_scores, axis=1)
        action_labels = verb_labels * num_nouns + noun_labels
        action_hits = np.concatenate([
            _top_k_hits((log_pv[s:s + chunk, :, None] + log_pn[s:s + chunk, None, :]).reshape(-1, num_verbs * num_nouns),
                        action_labels[s:s + chunk], k)
            for s in range(0, n, chunk)])
    return {"verb": float(np.mean(verb_hits)), "noun": float(np.mean(noun_hits)), "action": float(np.mean(action_hits))}
