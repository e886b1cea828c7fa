"""Attention-flow masks (Fig. 1) against closed forms and the paper's flow properties."""
import numpy as np
import pytest

from mbt_core.config import MBTConfig
from mbt_core.analysis.flow_mask import (LINK_KINDS, attention_flow_mask, group_mask, link_kinds, num_tokens,
                                token_layout)

TINY = MBTConfig.preset("tiny", num_layers=4, fusion_layer=2, num_bottlenecks=3)


def _owner(config: MBTConfig) -> np.ndarray:
    """Per token: index of its modality, or -1 for fusion tokens (built from the config, not the layout)."""
    owner = [np.full(config.num_tokens(m), i) for i, m in enumerate(config.modalities)]
    fsn = config.num_fusion_tokens if config.fusion == "bottleneck" and config.fusion_layer < config.num_layers else 0
    return np.concatenate(owner + [np.full(fsn, -1)])


def test_layout_follows_config_order_and_counts():
    groups = token_layout(TINY)
    assert [g.name for g in groups] == ["spec CLS", "spec patches", "rgb CLS", "rgb patches", "fsn"]
    assert [g.size for g in groups] == [1, 50, 1, 72, 3]
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:])) and groups[0].start == 0
    assert num_tokens(TINY) == 51 + 73 + 3
    gap = token_layout(TINY.replace(classifier="gap", fusion="cross_attention"))
    assert [g.name for g in gap] == ["spec patches", "rgb patches"]
    assert [g.name for g in token_layout(TINY.replace(fusion_layer=4))][-1] == "rgb patches"  # late fusion: no fsn
    assert token_layout(TINY.replace(extra_fusion_token=True))[-1].size == 4


@pytest.mark.parametrize("fusion", ["bottleneck", "cross_attention", "self_attention"])
def test_block_diagonal_below_fusion_layer(fusion):
    cfg = TINY.replace(fusion=fusion)
    owner = _owner(cfg)
    expected = (owner[:, None] == owner[None, :]) & (owner[:, None] >= 0)  # fsn tokens idle below L_f
    for layer in range(cfg.fusion_layer):
        assert not cfg.is_fused(layer)
        np.testing.assert_array_equal(attention_flow_mask(cfg, layer), expected)


def test_bottleneck_fused_layers():
    owner = _owner(TINY)
    for layer in range(TINY.fusion_layer, TINY.num_layers):
        mask = attention_flow_mask(TINY, layer)
        cross = (owner[:, None] != owner[None, :]) & (owner[:, None] >= 0) & (owner[None, :] >= 0)
        assert not mask[cross].any()  # no direct cross-modal link, CLS included
        assert mask[owner == -1].all() and mask[:, owner == -1].all()  # fsn rows read all; all read fsn
        assert mask[owner[:, None] == owner[None, :]].all()


@pytest.mark.parametrize("fusion", ["cross_attention", "self_attention"])
def test_attention_fusion_is_dense(fusion):
    cfg = TINY.replace(fusion=fusion)
    assert (_owner(cfg) >= 0).all()  # no fusion tokens
    for layer in range(cfg.fusion_layer, cfg.num_layers):
        assert attention_flow_mask(cfg, layer).all()
        assert (link_kinds(cfg, layer)[0, 2:] == LINK_KINDS.index("cross-modal")).all()


@pytest.mark.parametrize("fusion", ["bottleneck", "cross_attention", "self_attention"])
def test_late_fusion_never_crosses(fusion):
    cfg = TINY.replace(fusion=fusion, fusion_layer=TINY.num_layers)
    owner = _owner(cfg)
    for layer in range(cfg.num_layers):
        mask = attention_flow_mask(cfg, layer)
        assert not mask[owner[:, None] != owner[None, :]].any()


@pytest.mark.parametrize("classifier", ["token", "gap"])
@pytest.mark.parametrize("b", [1, 4, 7])
def test_true_counts_match_closed_forms(classifier, b):
    cfg = TINY.replace(classifier=classifier, num_bottlenecks=b)
    n = [cfg.num_tokens(m) for m in cfg.modalities]
    unfused = sum(x * x for x in n)
    assert attention_flow_mask(cfg, 0).sum() == unfused
    assert attention_flow_mask(cfg, cfg.num_layers - 1).sum() == unfused + 2 * b * sum(n) + b * b
    dense = cfg.replace(fusion="cross_attention")
    assert attention_flow_mask(dense, cfg.num_layers - 1).sum() == sum(n) ** 2


def test_three_modalities_and_one():
    cfg = TINY.replace(modalities=("spec", "rgb", "flow"), fusion_layer=0)
    n = [cfg.num_tokens(m) for m in cfg.modalities]
    fsn = cfg.num_fusion_tokens
    assert attention_flow_mask(cfg, 0).sum() == sum(x * (x + fsn) for x in n) + fsn * (sum(n) + fsn)
    single = TINY.replace(modalities=("rgb",), fusion_layer=0)
    assert not single.is_fused(0) and attention_flow_mask(single, 0).all()
    assert [g.name for g in token_layout(single)] == ["rgb CLS", "rgb patches"]


def test_group_mask_is_exact_summary_of_paper_model():
    cfg = MBTConfig.preset("paper-b16")
    sizes = [g.size for g in token_layout(cfg)]
    assert sizes == [1, 400, 1, 1568, 4]  # 1970 modality tokens + B = 4
    for layer in (0, cfg.fusion_layer):
        groups = group_mask(cfg, layer)
        full = attention_flow_mask(cfg, layer)
        starts = [g.start for g in token_layout(cfg)]
        np.testing.assert_array_equal(full[np.ix_(starts, starts)], groups)
    assert group_mask(cfg, 0).tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0],
                                           [0, 0, 0, 0, 0]]
    assert group_mask(cfg, 11).tolist() == [[1, 1, 0, 0, 1], [1, 1, 0, 0, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1],
                                            [1, 1, 1, 1, 1]]


def test_bad_layer_names_the_range():
    with pytest.raises(ValueError, match="layer 4 must lie in 0..3"):
        attention_flow_mask(TINY, 4)
