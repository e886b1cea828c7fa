"""FLOP counter: against XLA's own cost analysis, and against the official counter's reference values."""
import jax
import pytest

from mbt_core import MBT, MBTConfig, dummy_inputs
from mbt_core.cli import main
from mbt_core.model.flops import flops_breakdown, flops_table, gflops


def xla_gflops(config: MBTConfig) -> float:
    """What the official counter measures: XLA's flops of one forward pass, halved (fused multiply-add)."""
    # The explicit attention path: XLA's cost analysis does not multiply a loop body (per_head) by its trips.
    config = config.replace(attention_impl="explicit")
    model, x = MBT(config), dummy_inputs(config, 1)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    analysis = jax.jit(lambda p, x: model.apply(p, x, train=False)).lower(params, x).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return analysis["flops"] / 2 / 1e9


MEDIUM = dict(hidden_size=256, num_layers=2, num_heads=4, mlp_dim=1024, rgb_frames=4, image_size=56, rgb_patch=8,
              spec_seconds=6.4, mel_bins=80, spec_patch=16, num_classes=10)


@pytest.mark.parametrize("fusion", ["bottleneck", "cross_attention", "self_attention"])
@pytest.mark.parametrize("fusion_layer", [0, 1, 2])
def test_efficient_count_matches_xla_medium(fusion, fusion_layer):
    config = MBTConfig(**MEDIUM, fusion=fusion, fusion_layer=fusion_layer)
    assert config.num_tokens("rgb") == 197 and config.num_tokens("spec") == 201
    assert gflops(config) == pytest.approx(xla_gflops(config), rel=0.02)


@pytest.mark.parametrize("fusion", ["bottleneck", "cross_attention", "self_attention"])
def test_efficient_count_matches_xla_tiny(fusion):
    config = MBTConfig.preset("tiny", fusion=fusion)
    assert gflops(config) == pytest.approx(xla_gflops(config), rel=0.10)


def test_official_convention_reproduces_reference_values():
    table = flops_table(MBTConfig.preset("paper-b16"), "official")
    reference = {("bottleneck", 8): 218.4, ("bottleneck", 0): 219.2, ("bottleneck", 12): 218.0,
                 ("cross_attention", 8): 306.0, ("cross_attention", 0): 482.0}
    for (fusion, lf), value in reference.items():
        assert table[fusion][lf] == pytest.approx(value, rel=0.05)
    assert set(table) == {"bottleneck", "cross_attention", "self_attention"}
    assert all(len(v) == 13 for v in table.values())
    # Late fusion is the same model whatever the strategy.
    assert len({round(v[12], 6) for v in table.values()}) == 1


def test_official_cross_attention_is_the_joint_block_cost():
    # The official code runs each modality's whole block over the joint sequence: at L_f = 0 that is
    # exactly two self-attention models over the joint sequence, minus the shared parts counted once.
    config = MBTConfig(**MEDIUM, fusion="cross_attention", fusion_layer=0)
    shared = config.replace(fusion="self_attention")
    parts_cross = flops_breakdown(config, "official")
    parts_self = flops_breakdown(shared, "official")
    layers = lambda p: p["attention"] + p["mlp"] + p["fusion"]
    assert layers(parts_cross) == pytest.approx(2 * layers(parts_self))
    assert gflops(config, "efficient") < gflops(config, "official")


def test_breakdown_parts_and_extra_fusion_token():
    config = MBTConfig.preset("paper-b16")
    parts = flops_breakdown(config)
    assert set(parts) == {"embedding", "attention", "mlp", "fusion", "head"}
    assert all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(gflops(config))
    # The official convention counts the B+1 tokens of the token classifier.
    assert gflops(config.replace(extra_fusion_token=True)) == pytest.approx(gflops(config, "official"))
    with pytest.raises(ValueError, match="convention"):
        gflops(config, "approximate")


def test_cli_prints_both_conventions(capsys):
    main(["flops", "--preset", "paper-b16"])
    out = capsys.readouterr().out
    assert "official" in out and "efficient" in out
    assert "bottleneck / cross-attention at L_f = 0" in out
    assert len([line for line in out.splitlines() if line.strip()[:2].strip().isdigit()]) == 13


def test_cli_shows_the_tiny_model_in_mflops(capsys):
    """The tiny preset's costs are ~0.02 GFLOPs: printed in MFLOPs with four significant digits, never 0.0."""
    main(["flops", "--preset", "tiny"])
    out = capsys.readouterr().out
    assert out.startswith("MFLOPs per clip")
    rows = [line.split("|") for line in out.splitlines() if line.strip()[:2].strip().isdigit()]
    config = MBTConfig.preset("tiny")
    assert len(rows) == config.num_layers + 1
    for lf, row in enumerate(rows):
        cells = [float(c) for c in row[1:]]
        expected = [1e3 * gflops(config.replace(fusion=f, fusion_layer=lf), conv)
                    for conv in ("official", "efficient") for f in ("bottleneck", "cross_attention", "self_attention")]
        assert cells == pytest.approx(expected, rel=5e-4) and min(cells) > 1
