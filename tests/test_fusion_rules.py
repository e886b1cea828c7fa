"""The fusion rules live on MBTConfig; the model, the FLOP counter, the flow masks, rollout and the widgets agree
with them at the edges (L_f = 0, L_f = L, one modality), compared against what the model itself builds."""
import itertools

import jax
import numpy as np
import pytest

from mbt_core.analysis.flow_mask import FUSION_GROUP, attention_flow_mask, token_layout
from mbt_core.analysis.rollout import mbt_rollout
from mbt_core.config import FUSIONS, MBTConfig
from mbt_core.model.flops import flops_breakdown
from mbt_core.model.model import MBT, dummy_inputs

MICRO = MBTConfig.preset("micro")  # L = 2
CONFIGS = [MICRO.replace(fusion=f, fusion_layer=lf, modalities=mods)
           for f, lf, mods in itertools.product(FUSIONS, range(MICRO.num_layers + 1), [("spec", "rgb"), ("rgb",)])]


def _shapes(cfg):
    """Parameter and captured-attention shapes of the model (jax.eval_shape: nothing is computed)."""
    model = MBT(cfg)
    inputs = dummy_inputs(cfg, 2)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))["params"]
    _, aux = jax.eval_shape(lambda p: model.apply({"params": p}, inputs, train=False, capture_attention=True), params)
    return params, aux["attention"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.fusion}-lf{c.fusion_layer}-{'+'.join(c.modalities)}")
def test_every_module_follows_the_config_rules(cfg):
    params, attention = _shapes(cfg)
    # The model: fusion tokens exist exactly where the config says, with fsn_tokens rows.
    assert ("bottleneck" in params) == cfg.has_fusion_tokens
    if cfg.has_fusion_tokens:
        assert params["bottleneck"].shape[1] == cfg.fsn_tokens == cfg.num_fusion_tokens
    else:
        assert cfg.fsn_tokens == 0
    # ...and a layer is fused exactly where the config says: its attention reads other modalities' tokens.
    own = {m: cfg.num_tokens(m) for m in cfg.modalities}
    streams = [m for m in cfg.modalities]
    for layer in range(cfg.num_layers):
        unfused = all(len(attention.get(m, [])) > layer and attention[m][layer].shape[-1] == own[m] for m in streams)
        assert cfg.is_fused(layer) == (not unfused), layer
    assert list(cfg.fused_layers) == [l for l in range(cfg.num_layers) if cfg.is_fused(l)]
    assert list(cfg.unfused_layers) == [l for l in range(cfg.num_layers) if not cfg.is_fused(l)]
    # The FLOP counter charges fusion exactly for fused layers.
    assert (flops_breakdown(cfg)["fusion"] > 0) == bool(cfg.fused_layers)
    # Flow masks: an fsn group where the model has fusion tokens; cross-modal links only in fused layers.
    groups = token_layout(cfg)
    assert (groups[-1].name == FUSION_GROUP) == cfg.has_fusion_tokens
    for layer in range(cfg.num_layers):
        mask = attention_flow_mask(cfg, layer)
        owner = np.concatenate([np.full(g.size, -1 if g.modality is None else cfg.modalities.index(g.modality))
                                for g in groups])
        crosses = mask & (owner[:, None] != owner[None, :])
        assert crosses.any() == cfg.is_fused(layer)
    # Rollout's joint order has the model's fusion tokens and no others (it used to add B at L_f = L).
    rng = np.random.default_rng(0)
    weights = {s: [rng.random(a.shape) for a in layers] for s, layers in attention.items()}
    rolled = mbt_rollout(weights, cfg)
    fusion = rolled["tokens"]["fusion"]
    assert fusion.stop - fusion.start == cfg.fsn_tokens
    assert rolled["joint"].shape[-1] == groups[-1].stop


def test_layer_outside_the_model_is_refused():
    with pytest.raises(ValueError, match="layer 2 must lie in 0..1"):
        MICRO.is_fused(2)


def test_widget_state_uses_the_same_layers():
    pytest.importorskip("ipywidgets")
    from widgets.fusion_explorer import explorer_state

    for cfg in CONFIGS:
        state = explorer_state(cfg, cfg.fusion, cfg.fusion_layer, cfg.num_bottlenecks)
        assert state["layers"] == {"unfused": cfg.unfused_layers, "fused": cfg.fused_layers}
