"""Classification losses: sigmoid BCE (multi-label), softmax CE (single label), two-head CE (EPIC).

By default each modality's logits get their own loss against that modality's (possibly mixed) labels
and the losses are averaged, as the official trainer does; this is what makes modality mixup meaningful.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import optax

from mbt_core.config import LABEL_TYPES


def smooth(labels: jnp.ndarray, smoothing: float, multi_label: bool) -> jnp.ndarray:
    """Label smoothing: towards 0.5 per class (multi-label) or towards uniform over classes."""
    if smoothing == 0.0:
        return labels
    target = 0.5 if multi_label else 1.0 / labels.shape[-1]
    return labels * (1.0 - smoothing) + smoothing * target


def classification_loss(logits: Any, labels: Any, label_type: str, smoothing: float = 0.0) -> jnp.ndarray:
    """Mean loss over the batch of one set of logits; labels are dense (B, C) targets (or a dict of them)."""
    if label_type == "multi_label":
        return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, smooth(labels, smoothing, True)), -1))
    if label_type == "single_label":
        return jnp.mean(optax.softmax_cross_entropy(logits, smooth(labels, smoothing, False)))
    if label_type == "multi_head":
        return sum(classification_loss(logits[h], labels[h], "single_label", smoothing) for h in logits)
    raise ValueError(f"label_type {label_type!r} is not one of {LABEL_TYPES}")


def mbt_loss(logits: Any, aux: Mapping[str, Any], batch: Mapping[str, Any], label_type: str, *,
             per_modality: bool = True, smoothing: float = 0.0) -> jnp.ndarray:
    """The training loss: per-modality losses averaged (with `labels_<m>` when mixed), or on the mean logits."""
    if not per_modality:
        return classification_loss(logits, batch["labels"], label_type, smoothing)
    losses = [classification_loss(out, batch.get(f"labels_{m}", batch["labels"]), label_type, smoothing)
              for m, out in aux["per_modality"].items()]
    return sum(losses) / len(losses)
