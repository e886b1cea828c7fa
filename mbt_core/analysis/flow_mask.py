"""Which token may attend to which in one layer of MBT: the attention-flow masks of the paper's Fig. 1.

Token order is the joint order of `rollout.mbt_rollout`: the modalities in `config.modalities` order,
each `[CLS, patches...]` (no CLS with the `gap` classifier), then the `fsn` tokens. Fusion tokens are
listed only where the model creates them (`MBTConfig.has_fusion_tokens`: bottleneck fusion, two or more
modalities, L_f < L).

- Below L_f every modality attends only to itself (block-diagonal); the `fsn` tokens take no part yet.
- Fused bottleneck layers (Eq. 8-9): each modality's tokens attend to their own tokens and the `fsn`
  tokens; an `fsn` row attends to every modality's tokens and the `fsn` tokens, because every modality's
  block updates it (mean or asymmetric update alike). No patch attends to another modality's patch.
- Fused cross- or self-attention layers (Sec. 3.2.1, Eq. 5-6): every token attends to every token.

The rule is constant on each pair of token groups (a modality's CLS, its patches, the `fsn` tokens), so
`group_mask` is an exact summary and `attention_flow_mask` expands it; the masks describe the model as
trained (`fuse_at_eval=False` evaluation is unimodal throughout). NumPy only.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mbt_core.config import MBTConfig

# Codes of `link_kinds`: how query group i reaches key group j in a layer.
LINK_KINDS = ("none", "within modality", "fusion tokens", "cross-modal")
FUSION_GROUP = "fsn"


class TokenGroup(NamedTuple):
    """A contiguous span of the joint token order: a modality's CLS, its patches, or the `fsn` tokens."""

    name: str  # e.g. "spec CLS", "rgb patches", "fsn"
    modality: str | None  # None for the fusion tokens
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Tokens in the group."""
        return self.stop - self.start


def token_layout(config: MBTConfig) -> list[TokenGroup]:
    """The token groups in joint order with their [start, stop) spans."""
    groups, start = [], 0
    for m in config.modalities:
        if config.classifier == "token":
            groups.append(TokenGroup(f"{m} CLS", m, start, start + 1))
            start += 1
        patches = config.num_patches(m)
        groups.append(TokenGroup(f"{m} patches", m, start, start + patches))
        start += patches
    if config.has_fusion_tokens:
        groups.append(TokenGroup(FUSION_GROUP, None, start, start + config.fsn_tokens))
    return groups


def link_kinds(config: MBTConfig, layer: int) -> np.ndarray:
    """(G, G) int codes into `LINK_KINDS`: how each query group reaches each key group in `layer`."""
    groups = token_layout(config)
    fused = config.is_fused(layer)
    kinds = np.zeros((len(groups), len(groups)), dtype=np.int8)
    for i, q in enumerate(groups):
        for j, k in enumerate(groups):
            if q.modality is not None and q.modality == k.modality:
                kinds[i, j] = 1  # every layer: a modality's own block
            elif not fused:
                continue
            elif config.fusion != "bottleneck":
                kinds[i, j] = 3  # cross- or self-attention over the joint sequence
            elif q.modality is None or k.modality is None:
                kinds[i, j] = 2  # Eq. 8: own tokens with the fsn tokens; fsn rows read every modality
    return kinds


def group_mask(config: MBTConfig, layer: int) -> np.ndarray:
    """(G, G) bool over `token_layout` groups: True where a group's tokens attend to another's in `layer`."""
    return link_kinds(config, layer) > 0


def expand_groups(config: MBTConfig, group_values: np.ndarray) -> np.ndarray:
    """Repeat a (G, G) per-group array to the (N, N) per-token array of the joint order."""
    sizes = [g.size for g in token_layout(config)]
    return np.repeat(np.repeat(group_values, sizes, axis=0), sizes, axis=1)


def attention_flow_mask(config: MBTConfig, layer: int) -> np.ndarray:
    """(N, N) bool: True where token i (query) may attend to token j (key) in `layer` (Fig. 1)."""
    return expand_groups(config, group_mask(config, layer))


def num_tokens(config: MBTConfig) -> int:
    """Tokens in the joint order (every modality's tokens plus the `fsn` tokens where they exist)."""
    return token_layout(config)[-1].stop
