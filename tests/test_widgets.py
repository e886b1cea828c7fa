"""Widgets driven without a browser: set slider values, read labels, images and the static HTML."""
import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from mbt_core.analysis.flow_mask import attention_flow_mask, group_mask  # noqa: E402
from mbt_core.analysis.overlay import clip_rollout, frame_panels, frame_triptych, summed_map  # noqa: E402
from mbt_core.analysis.rollout import attention_rollout  # noqa: E402
from mbt_core.config import MBTConfig  # noqa: E402
from mbt_core.data.cache import CachedSplit  # noqa: E402
from mbt_core.media.images import to_uint8  # noqa: E402
from mbt_core.model.flops import flops_table, gflops  # noqa: E402
from mbt_core.model.model import MBT, dummy_inputs  # noqa: E402
from mbt_core.recipes import RunConfig  # noqa: E402
from mbt_core.run_dir import read_results  # noqa: E402
from widgets.explorer_runs import add_command, sweep_overlays  # noqa: E402
from widgets.fusion_explorer import KIND_COLOURS, NOT_IN_SWEEP, FusionExplorer, explorer_state  # noqa: E402
from widgets.rollout_stepper import RolloutStepper, clip_attention, layer_rollouts  # noqa: E402

TINY = MBTConfig.preset("tiny", num_layers=4, fusion_layer=2)


def _decode(png: bytes) -> np.ndarray:
    """RGB array of PNG bytes."""
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def _numbers(text: str) -> list[float]:
    """The bold numbers of a label."""
    return [float(x) for x in re.findall(r"<b>([-0-9.e+]+)</b>", text)]


def _results(tmp_path, rows, config=TINY):
    """A made-up sweep: results.json plus run directories holding config.json, run_dir relative."""
    out = tmp_path / "sweep"
    full = []
    for fusion, lf, b, m_ap in rows:
        run_dir = out / f"{fusion}-lf{lf}-b{b}"
        run_dir.mkdir(parents=True)
        model = config.replace(fusion=fusion, fusion_layer=lf, num_bottlenecks=b)
        (run_dir / "config.json").write_text(json.dumps(RunConfig(model).to_dict()))
        full.append({"fusion": fusion, "fusion_layer": lf, "num_bottlenecks": b, "num_layers": config.num_layers,
                     "mAP": m_ap, "gflops": gflops(model), "gflops_official": gflops(model, "official"),
                     "mAP_speech": m_ap / 2, "run_dir": f"elsewhere/{run_dir.name}"})
    (out / "results.json").write_text(json.dumps(full))
    return out


def test_state_numbers_come_from_the_flop_counter():
    for fusion, lf, b in [("bottleneck", 2, 4), ("cross_attention", 0, 4), ("self_attention", 4, 1),
                          ("bottleneck", 1, 256)]:
        s = explorer_state(TINY, fusion, lf, b)
        cfg = TINY.replace(fusion=fusion, fusion_layer=lf, num_bottlenecks=b)
        for convention in ("efficient", "official"):
            assert s["gflops"][convention] == gflops(cfg, convention)
            assert s["gflops_curve"][convention] == flops_table(cfg, convention)[fusion]
            assert s["gflops_curve"][convention][lf] == pytest.approx(s["gflops"][convention])
        assert s["run_note"] == "no sweep results given" and s["mAP"] is None
        # The paper's ViT-B/16 at the same fusion, L_f and B (Fig. 3 right is about that scale).
        paper = MBTConfig.preset("paper-b16").replace(fusion=fusion, fusion_layer=lf, num_bottlenecks=b)
        for convention in ("efficient", "official"):
            assert s["reference"]["gflops"][convention] == gflops(paper, convention)
            assert s["reference"]["gflops_curve"][convention] == flops_table(paper, convention)[fusion]
        assert s["reference"]["gflops"]["efficient"] > 1000 * s["gflops"]["efficient"]
    assert explorer_state(MBTConfig.preset("paper-b16"), "bottleneck", 4, 4)["reference"] is None  # it is the paper's


def test_b_note_says_where_b_means_nothing():
    assert explorer_state(TINY, "bottleneck", 2, 4)["b_note"] == ""
    assert "cross attention fusion has none" in explorer_state(TINY, "cross_attention", 2, 4)["b_note"]
    assert "late fusion" in explorer_state(TINY, "bottleneck", 4, 4)["b_note"]
    ex = FusionExplorer(TINY)
    ex.fusion.value = "self_attention"
    assert ex.num_bottlenecks.disabled and "self attention fusion has none" in ex.b_note.value
    ex.fusion.value = "bottleneck"
    assert not ex.num_bottlenecks.disabled and ex.b_note.value == ""


def test_state_masks_per_token_and_per_group():
    s = explorer_state(TINY, "bottleneck", 2, 4)
    assert s["mask_view"] == "tokens"
    np.testing.assert_array_equal(s["masks"]["unfused"] > 0, attention_flow_mask(s["config"], 0))
    np.testing.assert_array_equal(s["masks"]["fused"] > 0, attention_flow_mask(s["config"], 3))
    assert list(s["layers"]["fused"]) == [2, 3]
    late = explorer_state(TINY, "bottleneck", 4, 4)
    assert late["masks"]["fused"] is None and list(late["layers"]["unfused"]) == [0, 1, 2, 3]
    paper = explorer_state(MBTConfig.preset("paper-b16"), "bottleneck", 8, 4)
    assert paper["mask_view"] == "groups" and paper["num_tokens"] == 1974
    assert paper["masks"]["fused"].shape == (5, 5)


def test_explorer_gflops_label_follows_sliders():
    ex = FusionExplorer(TINY)
    for fusion, lf, b in [("bottleneck", 0, 1), ("bottleneck", 3, 1024), ("cross_attention", 1, 1024),
                          ("self_attention", 4, 8)]:
        ex.fusion.value, ex.fusion_layer.value, ex.num_bottlenecks.value = fusion, lf, b
        cfg = TINY.replace(fusion=fusion, fusion_layer=lf, num_bottlenecks=b)
        shown = _numbers(ex.gflops_label.value)
        paper = MBTConfig.preset("paper-b16").replace(fusion=fusion, fusion_layer=lf, num_bottlenecks=b)
        assert shown == pytest.approx([gflops(cfg), gflops(cfg, "official"), gflops(paper), gflops(paper, "official")],
                                      rel=1e-3)
        assert ex.num_bottlenecks.disabled == (fusion != "bottleneck")
    assert ex.num_bottlenecks.options[:3] == (1, 2, 4) and ex.num_bottlenecks.options[-1] == 1024


def _shown_mask(png: bytes, n: int) -> np.ndarray:
    """The per-token bool mask read back from a mask picture (one cell per token, colours -> kinds)."""
    image = _decode(png)
    scale = image.shape[0] // n
    centres = image[scale // 2 + scale * np.arange(n)][:, scale // 2 + scale * np.arange(n)]
    kinds = np.argmin(np.abs(centres[:, :, None, :].astype(int) - KIND_COLOURS[None, None]).sum(-1), axis=-1)
    return kinds > 0


def test_explorer_mask_pictures_change_with_fusion_layer():
    ex = FusionExplorer(TINY)
    panels = lambda: {p: ex.mask_images[p].layout.display for p in ("unfused", "fused")}
    ex.fusion_layer.value = 0
    assert panels() == {"unfused": "none", "fused": "block"}
    assert "no layers below L_f = 0" in ex.mask_captions["unfused"].value  # an empty panel says why
    bottleneck = ex.mask_images["fused"].value
    n = ex.state["num_tokens"]
    np.testing.assert_array_equal(_shown_mask(bottleneck, n), attention_flow_mask(TINY.replace(fusion_layer=0), 0))
    ex.fusion.value = "cross_attention"
    assert ex.mask_images["fused"].value != bottleneck
    assert _shown_mask(ex.mask_images["fused"].value, ex.state["num_tokens"]).all()
    ex.fusion_layer.value = 4
    assert panels() == {"unfused": "block", "fused": "none"} and "late fusion" in ex.mask_captions["fused"].value
    assert "layers 1-4" in ex.mask_captions["unfused"].value
    ex.fusion_layer.value = 1
    assert "layers 2-4" in ex.mask_captions["fused"].value and "layer 1<" in ex.mask_captions["unfused"].value


def test_gflops_chart_marks_the_current_fusion_layer():
    ex = FusionExplorer(TINY)
    charts = {}
    for lf in (0, 3):
        ex.fusion_layer.value = lf
        charts[lf] = ET.fromstring(ex.gflops_chart.value)
    ns = "{http://www.w3.org/2000/svg}"
    curves = charts[0].findall(f"{ns}polyline")
    assert [c.get("data-convention") for c in curves] == ["efficient", "official"]
    points = [p.split(",") for p in curves[0].get("points").split()]
    assert len(points) == TINY.num_layers + 1
    for lf, svg in charts.items():
        marks = svg.findall(f"{ns}circle")
        assert float(marks[0].get("cx")) == pytest.approx(float(points[lf][0]))


def test_explorer_reads_map_from_results(tmp_path):
    out = _results(tmp_path, [("bottleneck", 2, 4, 0.5), ("bottleneck", 4, 4, 0.25), ("cross_attention", 2, 4, 0.4)])
    ex = FusionExplorer(results=out)
    assert ex.config == TINY.replace(fusion_layer=2, num_bottlenecks=4)  # read from the runs' config.json
    assert _numbers(ex.map_label.value) == [0.5] and "speech 0.250" in ex.map_label.value
    assert ex.num_bottlenecks.options == (1, 4, 16) and ex.train_button.layout.display == "none"
    ex.num_bottlenecks.value = 16
    assert NOT_IN_SWEEP in ex.map_label.value and _numbers(ex.map_label.value) == []
    assert ex.train_button.layout.display == "flex" and "mbt sweep" in ex.map_label.value  # train here, or the line
    ex.fusion_layer.value = 4  # late fusion: B changes nothing, the B = 4 run answers
    assert _numbers(ex.map_label.value) == [0.25] and "B = 4" in ex.map_label.value
    ex.fusion.value, ex.fusion_layer.value = "cross_attention", 2
    assert _numbers(ex.map_label.value) == [0.4]
    ex.fusion.value = "self_attention"
    assert NOT_IN_SWEEP in ex.map_label.value
    ex.fusion_layer.value = 4  # late fusion is one model whatever the strategy: the bottleneck run answers
    assert _numbers(ex.map_label.value) == [0.25] and "every fusion is late fusion" in ex.map_label.value
    assert read_results(out / "results.json")[0]["run_dir"] == str(out / "bottleneck-lf2-b4")


def test_explorer_flags_results_of_another_model(tmp_path):
    out = _results(tmp_path, [("bottleneck", 2, 4, 0.5)])
    ex = FusionExplorer(TINY.replace(hidden_size=128), results=out / "results.json")
    assert _numbers(ex.map_label.value) == [0.5] and "differs from this config" in ex.map_label.value
    deeper = FusionExplorer(TINY.replace(num_layers=6), results=out)
    assert "not in the sweep (its models have L = [4], this config L = 6)" in deeper.map_label.value


def test_bad_results_name_file_and_row(tmp_path):
    file = tmp_path / "results.json"
    file.write_text(json.dumps([{"fusion": "bottleneck", "fusion_layer": 1, "num_bottlenecks": 2, "num_layers": 2,
                                 "mAP": 0.1}, {"fusion": "bottleneck", "fusion_layer": 1}]))
    with pytest.raises(ValueError, match=r"results.json row 1: missing field\(s\) \['num_bottlenecks'"):
        read_results(tmp_path)
    file.write_text("{not json")
    with pytest.raises(ValueError, match="results.json: not valid JSON"):
        read_results(file)
    with pytest.raises(FileNotFoundError, match="no sweep results"):
        read_results(tmp_path / "missing")


def test_explorer_overlays_per_setting_and_clip(tmp_path):
    out = _results(tmp_path, [("bottleneck", 2, 4, 0.5), ("cross_attention", 2, 4, 0.4)])
    images = {("bottleneck", 2, 4, clip): np.full((8, 8, 3), 40 * (clip + 1), np.uint8) for clip in (0, 1)}
    calls = []

    def source(fusion, lf, b, clip):
        calls.append((fusion, lf, b, clip))
        return images.get((fusion, lf, b, clip))

    ex = FusionExplorer(TINY, results=out, overlays=source, clips=[0, 1])
    assert _decode(ex.overlay_image.value)[0, 0].tolist() == [40] * 3
    ex.clip.value = 1
    assert _decode(ex.overlay_image.value)[0, 0].tolist() == [80] * 3
    ex.fusion.value = "cross_attention"
    assert ex.overlay_image.layout.display == "none" and "no overlay for clip 1" in ex.overlay_note.value
    ex.fusion.value = "bottleneck"
    ex.num_bottlenecks.value = 16
    assert NOT_IN_SWEEP in ex.overlay_note.value
    ex.num_bottlenecks.value = 4
    assert calls.count(("bottleneck", 2, 4, 1)) == 1  # cached
    mapped = FusionExplorer(TINY, results=out, overlays=images)
    assert list(mapped.clip.options) == [0, 1] and mapped.overlay_image.layout.display == "block"
    no_sweep = FusionExplorer(TINY, overlays=images)  # overlays keyed by the sliders' setting itself
    assert no_sweep.overlay_image in no_sweep.children and no_sweep.map_label not in no_sweep.children
    assert _decode(no_sweep.overlay_image.value)[0, 0].tolist() == [40] * 3
    no_sweep.fusion_layer.value = 3
    assert "no overlay for clip 0" in no_sweep.overlay_note.value
    assert "no clips to show" in FusionExplorer(TINY, overlays=source).overlay_note.value


def test_explorer_redraw_time():
    for name in ("tiny", "paper-b16"):
        ex = FusionExplorer(MBTConfig.preset(name))
        start = time.perf_counter()
        for lf in range(ex.config.num_layers + 1):
            ex.fusion_layer.value = lf
        for b in ex.num_bottlenecks.options:
            ex.num_bottlenecks.value = b
        moves = ex.config.num_layers + 1 + len(ex.num_bottlenecks.options)
        print(f"\n{name}: {1000 * (time.perf_counter() - start) / moves:.1f} ms per slider move")


def test_rollout_stepper_steps_frames_and_layers():
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    maps = np.zeros((3, 2, 2, 2))  # 3 layers, 2 tubelets of 2 frames, 2x2 grid
    maps[:, 0, 0, 0] = 1.0  # first tubelet: top-left hot
    maps[:, 1, 1, 1] = 1.0  # second tubelet: bottom-right hot
    maps[0] = 1.0  # layer 1: flat
    stepper = RolloutStepper(frames, maps, alpha=1.0, layer_names=["unimodal", "fused (bottleneck)", "fused (x)"])
    # Sliders and caption count the same way, from 1.
    assert (stepper.frame_slider.min, stepper.frame_slider.max) == (1, 4)
    assert (stepper.layer_slider.min, stepper.layer_slider.value) == (1, 3)
    assert "frame 1 of 4" in stepper.caption.value and "layer 3 of 3 (fused (x))" in stepper.caption.value

    def hot():  # the patch of the blend panel where the colour map is reddest (JET: red high, blue low)
        image = _decode(stepper.image.value).astype(int)[-240:, -240:]  # 8 pixels enlarged 30 times
        return tuple(int(i) // 120 for i in np.unravel_index(np.argmax(image[..., 0] - image[..., 2]),
                                                             image.shape[:2]))

    assert hot() == (0, 0)
    stepper.frame_slider.value = 3
    assert hot() == (1, 1) and "frame 3 of 4" in stepper.caption.value
    assert "25% of the patches" in stepper.caption.value  # one hot patch of four
    stepper.layer_slider.value = 1
    assert "50% of the patches" in stepper.caption.value and "layer 1 of 3 (unimodal)" in stepper.caption.value
    image = _decode(stepper.image.value)
    np.testing.assert_array_equal(image, frame_triptych(frames[2], stepper.maps[0, 2], alpha=1.0,
                                                        vmax=stepper.maps[0].max()))
    stepper.opacity.value = 0.0  # the frame alone: black
    assert (_decode(stepper.image.value)[-240:, -240:] == 0).all()
    with pytest.raises(ValueError, match="3 time steps, which do not divide the 4 frames"):
        RolloutStepper(frames, np.zeros((2, 3, 2, 2)))
    with pytest.raises(ValueError, match="finite and >= 0"):
        RolloutStepper(frames, -maps)


def test_rollout_stepper_has_a_kernel_free_stand_in():
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    stepper = RolloutStepper(frames, np.random.default_rng(1).random((3, 2, 2)), title="run <x>")
    bundle = stepper._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["text/html"] == stepper.static_html()
    page = bundle["text/html"]
    pictures = json.loads(re.search(r"pictures = (\[.*?\])", page).group(1))
    captions = json.loads(re.search(r"captions = (\[.*?\])", page).group(1))
    assert len(pictures) == len(captions) == 2 * 3  # every (layer, frame)
    assert 'type="range" class="frame" min="1" max="2"' in page and 'class="layer" min="1" max="3" value="3"' in page
    assert captions[0].startswith("frame 1 of 2, rollout through layer 1 of 3")
    assert captions[-1].startswith("frame 2 of 2, rollout through layer 3 of 3")
    shown = cv2.imdecode(np.frombuffer(__import__("base64").b64decode(pictures[-1].split(",")[1]), np.uint8),
                         cv2.IMREAD_COLOR)[..., ::-1]
    stepper.frame_slider.value, stepper.layer_slider.value = 2, 3
    np.testing.assert_array_equal(shown, _decode(stepper.image.value))
    assert "<b>run &lt;x&gt;</b>" in page


MICRO = MBTConfig.preset("micro")


def _micro_split(n: int = 3) -> CachedSplit:
    """A hand-built tokenised split of n random micro clips."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, 1, MICRO.rgb_frames, MICRO.image_size, MICRO.image_size, 3), dtype=np.uint8)
    spec = rng.normal(size=(n, 1, MICRO.spec_frames, MICRO.mel_bins)).astype(np.float32)
    return CachedSplit(frames, spec, np.zeros(n, bool), np.zeros(n, bool), clip_ids=np.array(["a", "b", "c"][:n]))


def _params(config: MBTConfig, seed: int = 0):
    return MBT(config).init(jax.random.PRNGKey(seed), dummy_inputs(config), train=False)["params"]


@pytest.mark.parametrize("fusion, lf", [("bottleneck", 1), ("self_attention", 0), ("cross_attention", 2)])
def test_layer_rollouts_end_at_the_clip_rollout(fusion, lf):
    cfg = MICRO.replace(fusion=fusion, fusion_layer=lf)
    params, example = _params(cfg), _micro_split().example(1)
    attention = clip_attention(cfg, params, example)
    maps = layer_rollouts(attention, cfg)
    assert maps.shape == (cfg.num_layers, *cfg.grid("rgb"))
    np.testing.assert_allclose(maps[-1], clip_rollout(cfg, params, example)["maps"]["rgb"], rtol=1e-6, atol=1e-9)
    if lf > 0:  # layer 1 is unimodal: one step of the stream's own rollout
        first = attention_rollout(attention["rgb"][0][:, None])[0]
        np.testing.assert_allclose(maps[0].ravel(), first[0, 1:], atol=1e-9)


def _fake_runs(monkeypatch, seeds: dict):
    """Make `load_params` / `load_dataset` / `tokenised_split` serve micro models and a hand-built split."""
    import mbt_core.experiment as experiment_module

    def load_params(run_dir, which):
        run = json.loads((Path(run_dir) / "config.json").read_text())
        cfg = MBTConfig.from_dict(run["model"])
        return RunConfig(cfg), _params(cfg, seeds.get(Path(run_dir).name, 0))

    monkeypatch.setattr(experiment_module, "load_params", load_params)
    monkeypatch.setattr(experiment_module, "load_dataset", lambda data: None)
    monkeypatch.setattr(experiment_module, "tokenised_split", lambda *a, **k: _micro_split())


def test_stepper_from_run_and_sweep_overlays(tmp_path, monkeypatch):
    out = _results(tmp_path, [("bottleneck", 1, 2, 0.5), ("cross_attention", 1, 2, 0.4)], config=MICRO)
    _fake_runs(monkeypatch, {"cross_attention-lf1-b2": 1})
    run_dir = out / "bottleneck-lf1-b2"
    stepper = RolloutStepper.from_run(run_dir, 2)
    assert stepper.children[0].value == "<b>bottleneck-lf1-b2: c</b>"  # clip 2 of the split has id "c"
    assert stepper.maps.shape == (MICRO.num_layers, MICRO.rgb_frames, *MICRO.grid("rgb")[1:])
    assert stepper.frames.dtype == np.uint8
    with pytest.raises(IndexError, match="clip 5 is outside the split, which holds 3 clips"):
        RolloutStepper.from_run(run_dir, 5)
    entries = sweep_overlays(out, clips=[0, 2], progress=False)
    assert sorted(entries) == [("bottleneck", 1, 2, 0), ("bottleneck", 1, 2, 2), ("cross_attention", 1, 2, 0),
                               ("cross_attention", 1, 2, 2)]
    split, params = _micro_split(), _params(MICRO.replace(num_bottlenecks=2, fusion_layer=1))
    for clip in (0, 2):
        entry = entries[("bottleneck", 1, 2, clip)]
        frames = split.example(clip)["rgb"]
        np.testing.assert_array_equal(entry["frame"], to_uint8(frames[len(frames) // 2]))  # the middle frame
        expected = summed_map(clip_rollout(MICRO.replace(num_bottlenecks=2, fusion_layer=1), params,
                                           split.example(clip))["fused_maps"]["rgb"])
        np.testing.assert_allclose(entry["map"], expected, rtol=1e-6)
    assert not np.array_equal(entries[("bottleneck", 1, 2, 0)]["map"], entries[("bottleneck", 1, 2, 2)]["map"])
    ex = FusionExplorer(MICRO, results=out, overlays=entries)
    ex.clip.value = 2
    entry = entries[("bottleneck", 1, 2, 2)]
    for alpha in (0.5, 0.2):  # the opacity slider re-blends the shown overlay
        ex.opacity.value = alpha
        np.testing.assert_array_equal(_decode(ex.overlay_image.value), frame_triptych(entry["frame"], entry["map"],
                                                                                      alpha=alpha))
    assert frame_panels(entry["frame"], entry["map"])["blend"].shape == (240, 240, 3)  # 8 pixels enlarged 30 times


def _trace_index(name: str, has_reference: bool = True) -> int:
    """Where each trace sits in a static-explorer frame."""
    order = ["unfused", "fused", "unfused note", "fused note", "gflops", "gflops official", "gflops mark"]
    order += ["paper gflops", "paper gflops official", "paper mark"] if has_reference else []
    return (order + ["mAP", "mAP mark", "mAP note", "overlay", "overlay note"]).index(name)


def test_static_export_steps_over_the_grid(tmp_path):
    from widgets.static_export import SLIDERS, explorer_figure, explorer_html, explorer_view

    out = _results(tmp_path, [("bottleneck", 2, 4, 0.5), ("bottleneck", 3, 4, 0.3), ("cross_attention", 2, 4, 0.4)])
    entry = {"frame": np.full((24, 24, 3), 90, np.uint8), "map": np.eye(3)}
    fig = explorer_figure(TINY, out, overlays={("bottleneck", 2, 4, 0): entry})
    layers = TINY.num_layers
    sliders = {s.name: [step.value for step in s.steps] for s in fig.layout.sliders}
    assert tuple(sliders) == SLIDERS
    assert sliders["L_f"] == [str(lf) for lf in range(layers + 1)]
    assert sliders["B"] == ["1", "4", "16"]  # beside a sweep: the paper's range and the sweep's B
    assert sliders["fusion"] == ["bottleneck", "cross_attention", "self_attention"]
    frames = {f.name: f for f in fig.frames}
    # The page script's contract: every slider combination names a frame (B ignored unless bottleneck).
    for fusion in sliders["fusion"]:
        for b in sliders["B"]:
            for lf in sliders["L_f"]:
                assert "|".join([fusion, b if fusion == "bottleneck" else "any", lf]) in frames
    assert len(frames) == (3 + 2) * (layers + 1)
    shown = frames["bottleneck|4|2"]
    cfg = TINY.replace(fusion_layer=2, num_bottlenecks=4)
    paper = MBTConfig.preset("paper-b16").replace(fusion_layer=2, num_bottlenecks=4)
    title = shown.layout.title.text
    assert f"{gflops(cfg):.4g}" in title and f"{gflops(paper):.4g}" in title and "mAP 0.500 (speech 0.250)" in title
    fused = np.array(shown.data[1].z, dtype=float)
    np.testing.assert_array_equal(fused > 0, group_mask(cfg, 2))
    assert (np.array(shown.data[0].z, dtype=float)[-1] == 0).all()  # fsn tokens idle below L_f
    assert np.isnan(np.array(frames["bottleneck|4|4"].data[0].z, dtype=float)[-1]).all()  # late fusion: no fsn
    at = _trace_index
    assert list(shown.data[at("mAP")].y) == [None, None, 0.5, 0.3, None]  # mAP over L_f for B = 4
    np.testing.assert_allclose(shown.data[at("gflops")].y, [gflops(cfg.replace(fusion_layer=lf))
                                                            for lf in range(layers + 1)])
    np.testing.assert_allclose(shown.data[at("paper gflops")].y, [gflops(paper.replace(fusion_layer=lf))
                                                                  for lf in range(paper.num_layers + 1)])
    assert NOT_IN_SWEEP in frames["bottleneck|16|2"].layout.title.text
    unimodal = frames["cross_attention|any|0"]
    assert np.isnan(np.array(unimodal.data[0].z, dtype=float)).all()  # no unimodal layers ...
    assert "no layers below L_f = 0" in unimodal.data[at("unfused note")].text[0]  # ... and the panel says so
    assert shown.data[at("unfused note")].text[0] == ""
    # Each trained setting shows its overlay; an untrained one says how to add it.
    decoded = cv2.imdecode(np.frombuffer(__import__("base64").b64decode(shown.data[at("overlay")].source.split(",")[1]),
                                         np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(decoded, frame_triptych(entry["frame"], entry["map"], alpha=0.5))
    missing = frames["self_attention|any|1"].data[at("overlay note")].text[0]
    assert NOT_IN_SWEEP in missing and "mbt sweep" in missing and str(tmp_path) not in missing
    # Axes fixed over every frame: masks top to bottom, GFLOPs ranges holding every setting's curves.
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1] and fig.layout.yaxis.autorange is False
    every = [v for f in fig.frames for v in f.data[at("gflops")].y + f.data[at("gflops official")].y]
    low, high = fig.layout.yaxis3.range
    assert low < min(every) and high > max(every)
    every = [v for f in fig.frames for v in f.data[at("paper gflops")].y + f.data[at("paper gflops official")].y]
    low, high = fig.layout.yaxis4.range
    assert low < min(every) and high > max(every)
    assert fig.layout.title.text == shown.layout.title.text  # starts at the config's setting

    path = explorer_html(TINY, out, tmp_path / "page" / "explorer.html")
    page = path.read_text()
    assert page.count('"method":"skip"') == 3 + 3 + layers + 1  # one step per fusion, B and L_f value
    assert "plotly_sliderchange" in page and "Plotly.animate" in page and "sliders[1].visible" in page
    assert len(page) > 3_000_000 and "<script src=" not in page  # plotly.js inline: works offline
    fragment = explorer_view(TINY, out).data  # the notebook output: the same page script, no <html> wrapper
    assert "plotly_sliderchange" in fragment and "<html>" not in fragment and len(fragment) > 3_000_000


def test_attention_view_picks_layer_head_and_query():
    from widgets.attention_view import AttentionView, attention_picture

    cfg = TINY.replace(num_layers=3, fusion_layer=1)
    params = MBT(cfg).init(jax.random.PRNGKey(0), dummy_inputs(cfg, 1), train=False)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    example = {m: np.asarray(jax.random.uniform(jax.random.PRNGKey(2), x.shape[1:], minval=-1, maxval=1))
               for m, x in dummy_inputs(cfg, 1).items()}
    view = AttentionView(example, clip_attention(cfg, params, example), cfg, title="clip")
    assert view.layer.value == 2 and view.head.value == "mean"
    assert list(view.query.options) == ["spec CLS", "rgb CLS"] + [f"fusion token {i}" for i in range(1, 5)]
    shown = {}
    for query in ("rgb CLS", "fusion token 2"):
        for head in ("mean", 0):
            view.query.value, view.head.value = query, head
            shown[query, head] = (_decode(view.image.value), view.caption.value)
    assert len({img.tobytes() for img, _ in shown.values()}) == 4  # every choice draws another map
    assert "fusion tokens" in shown["rgb CLS", "mean"][1] and "head 1" in shown["rgb CLS", 0][1]
    view.query.value = "fusion token 2"
    view.layer.value = 0  # unfused: no fusion tokens, the query falls back to the first CLS
    assert list(view.query.options) == ["spec CLS", "rgb CLS"] and view.query.value == "spec CLS"
    assert view.caption.value.startswith("layer 1 (unfused)") and "rgb patches 0.0%" in view.caption.value
    image, caption = attention_picture(example, view.attention, cfg, 2, ("cls", "rgb"))
    # Frames in rows of 8 above the spectrogram: 16 frames of 96 px, two rows.
    assert image.shape[1] == 8 * 96 + 7 * 4 and image.shape[0] > 2 * 96
    shares = [float(x) for x in re.findall(r"([0-9.]+)%", caption)]
    assert sum(shares) == pytest.approx(100, abs=0.3)


def test_live_widgets_display_their_kernel_free_stand_in(monkeypatch):
    """On ipywidgets 7 (display hook) and 8 (bundle) alike, a displayed widget carries its kernel-free HTML."""
    import base64
    import widgets.stand_in as stand_in

    shown = []
    monkeypatch.setattr(stand_in, "display", lambda bundle, raw: shown.append((bundle, raw)))
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    stepper = RolloutStepper(frames, np.random.default_rng(1).random((3, 2, 2)), title="run <x>")
    stepper._ipython_display_()
    [(bundle, raw)] = shown
    assert raw and bundle["text/html"] == stepper.static_html()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == stepper.model_id
    from widgets.attention_view import AttentionView

    cfg = TINY.replace(num_layers=2, fusion_layer=1)
    params = MBT(cfg).init(jax.random.PRNGKey(0), dummy_inputs(cfg, 1), train=False)["params"]
    example = {m: np.asarray(jax.random.uniform(jax.random.PRNGKey(3), x.shape[1:], minval=-1, maxval=1))
               for m, x in dummy_inputs(cfg, 1).items()}
    view = AttentionView(example, clip_attention(cfg, params, example), cfg, title="clip <1>")
    page = view._repr_mimebundle_()["text/html"]
    assert base64.b64encode(view.image.value).decode() in page and view.caption.value in page
    assert "<b>clip &lt;1&gt;</b>" in page


def test_attention_picture_leaves_unreached_patches_plain():
    """In a bottleneck layer the RGB CLS gives the spectrogram nothing: its picture is the plain spectrogram."""
    from mbt_core.analysis.overlay import spectrogram_overlay
    from widgets.attention_view import attention_picture

    cfg = TINY.replace(num_layers=2, fusion_layer=1)
    params = MBT(cfg).init(jax.random.PRNGKey(0), dummy_inputs(cfg, 1), train=False)["params"]
    example = {m: np.asarray(jax.random.uniform(jax.random.PRNGKey(3), x.shape[1:], minval=-1, maxval=1))
               for m, x in dummy_inputs(cfg, 1).items()}
    attention = clip_attention(cfg, params, example)
    image, caption = attention_picture(example, attention, cfg, 1, ("cls", "rgb"))
    assert "spec patches 0.0%" in caption
    plain = spectrogram_overlay(example["spec"], np.zeros(cfg.grid("spec")), (96 * 8 // 4, 96 * 8), alpha=0.0)
    np.testing.assert_array_equal(image[-plain.shape[0]:, :plain.shape[1]], plain)


def test_add_command_covers_the_sweep_and_the_new_setting(tmp_path):
    from mbt_core.cli import build_parser
    from mbt_core.experiment import grid

    out = _results(tmp_path, [("bottleneck", 2, 4, 0.5), ("self_attention", 1, 4, 0.3)])
    rows = read_results(out)
    line = add_command(out, rows, ("bottleneck", 0, 16))
    assert str(tmp_path) not in line and line.startswith("mbt sweep --config sweep/bottleneck-lf2-b4 ")
    args = build_parser().parse_args(line.split()[1:])
    settings = set(grid(args.fusions, args.fusion_layers, args.bottlenecks))
    assert {("bottleneck", 2, 4), ("self_attention", 1, 4), ("bottleneck", 0, 16)} <= settings
    assert args.out == "sweep"


def test_explorer_trains_a_missing_setting_in_place(tmp_path, monkeypatch):
    import widgets.fusion_explorer as module

    out = _results(tmp_path, [("bottleneck", 2, 4, 0.5)])
    calls = []

    def train(sweep_dir, fusion, lf, b, progress=True):  # stands in for experiment.sweep (tested on real runs)
        calls.append((Path(sweep_dir), fusion, lf, b))
        rows = json.loads((out / "results.json").read_text())
        model = TINY.replace(fusion=fusion, fusion_layer=lf, num_bottlenecks=b)
        rows.append({**rows[0], "fusion": fusion, "fusion_layer": lf, "num_bottlenecks": b, "mAP": 0.7,
                     "gflops": gflops(model)})
        (out / "results.json").write_text(json.dumps(rows))
        return rows

    monkeypatch.setattr(module, "train_setting", train)
    ex = FusionExplorer(results=out)
    assert ex.train_button.layout.display == "none"  # the sweep's own setting has its result
    ex.num_bottlenecks.value = 16
    assert ex.train_button.layout.display == "flex"
    ex.train_button.click()
    assert calls == [(out, "bottleneck", 2, 16)]
    assert _numbers(ex.map_label.value) == [0.7] and ex.train_button.layout.display == "none"


def test_add_command_from_a_relative_sweep_path(tmp_path, monkeypatch):
    out = _results(tmp_path, [("bottleneck", 2, 4, 0.5)])
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    line = add_command("../sweep", read_results("../sweep"), ("bottleneck", 0, 16))
    assert " --out sweep " in line and "--config sweep/bottleneck-lf2-b4" in line and out.name in line
