"""The optimiser of Sec. 4.2 with optax: linear warmup then cosine decay, clipping, SGD+momentum or AdamW."""
from __future__ import annotations

import math

import optax

from mbt_core.recipes import TrainConfig


def warmup_steps(train: TrainConfig, steps_per_epoch: int) -> int:
    """Warmup length in steps: `warmup_epochs` epochs, at most a fifth of the run for short runs."""
    return min(int(math.ceil(train.warmup_epochs * steps_per_epoch)), max(train.steps // 5, 1))


def learning_rate_schedule(train: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup from 0 to the base rate, then cosine decay to 0 at the last step."""
    warmup = warmup_steps(train, steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, train.learning_rate, warmup, max(train.steps, warmup + 1), 0.0)


def make_optimizer(train: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then SGD with momentum or AdamW on the schedule."""
    schedule = learning_rate_schedule(train, steps_per_epoch)
    if train.optimizer == "sgd":
        opt = optax.sgd(schedule, momentum=train.momentum)
        if train.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(train.weight_decay), opt)
    elif train.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=train.weight_decay)
    else:
        raise ValueError(f"train.optimizer {train.optimizer!r} is not 'sgd' or 'adamw'")
    if train.grad_clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), opt)
    return opt
