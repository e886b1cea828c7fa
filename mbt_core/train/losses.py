"""Classification losses: sigmoid BCE (multi-label), softmax CE (single label), two-head CE (EPIC: the heads' mean).

By default each modality's logits get their own loss against that modality's (possibly mixed) labels
and the losses are averaged, as the official trainer does; this is what makes modality mixup meaningful.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import optax

from mbt_core.config import LABEL_TYPES


def smooth(labels: jnp.ndarray, smoothing: float) -> jnp.ndarray:
    """Label smoothing as Scenic, multi-label and single-label alike: y (1 - s) + s / C over C classes."""
    if smoothing == 0.0:
        return labels
    return labels * (1.0 - smoothing) + smoothing / labels.shape[-1]


def head_labels(logits: Mapping[str, Any], labels: Any) -> dict[str, Any]:
    """Per-head targets: a dict as given, or the columns of concatenated one-hots in the heads' order."""
    if isinstance(labels, Mapping):
        return {h: labels[h] for h in logits}
    out, first = {}, 0
    for head, value in logits.items():
        out[head] = labels[..., first:first + value.shape[-1]]
        first += value.shape[-1]
    if first != labels.shape[-1]:
        raise ValueError(f"labels have {labels.shape[-1]} columns, the heads {first}")
    return out


def classification_loss(logits: Any, labels: Any, label_type: str, smoothing: float = 0.0) -> jnp.ndarray:
    """Mean loss over the batch of one set of logits; labels are dense (B, C) targets (or a dict of them)."""
    if label_type == "multi_label":
        return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, smooth(labels, smoothing)), -1))
    if label_type == "single_label":
        return jnp.mean(optax.softmax_cross_entropy(logits, smooth(labels, smoothing)))
    if label_type == "multi_head":  # the heads' mean, as the official EPIC trainer
        return sum(classification_loss(logits[h], part, "single_label", smoothing)
                   for h, part in head_labels(logits, labels).items()) / len(logits)
    raise ValueError(f"label_type {label_type!r} is not one of {LABEL_TYPES}")


def mbt_loss(logits: Any, aux: Mapping[str, Any], batch: Mapping[str, Any], label_type: str, *,
             per_modality: bool = True, smoothing: float = 0.0) -> jnp.ndarray:
    """The training loss: per-modality losses averaged (with `labels_<m>` when mixed), or on the mean logits."""
    if not per_modality:
        return classification_loss(logits, batch["labels"], label_type, smoothing)
    losses = [classification_loss(out, batch.get(f"labels_{m}", batch["labels"]), label_type, smoothing)
              for m, out in aux["per_modality"].items()]
    return sum(losses) / len(losses)
