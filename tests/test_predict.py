"""`mbt predict`: an official-format checkpoint and a generated clip give named top-k classes for the fused model
and each modality, a clip without audio is read from its frames, and the report is one self-contained page."""
import csv
import html
import json
import re
from html.parser import HTMLParser

import jax
import numpy as np
import pytest
from flax.traverse_util import unflatten_dict

import media
from mbt_core import MBT, MBTConfig
from mbt_core.cli import main
from mbt_core.data.tokenise import views
from mbt_core.datasets.class_names import names_from_files, read_class_names
from mbt_core.predict import load_checkpoint, predict
from official_checkpoint import random_params, released_names, write_official
from shared import shared_path

# Official geometry in miniature: 3 spectrogram channels (the official pipeline tiles log-mel), the released
# `_spec` names, AudioSet's 527 classes.
CONFIG = MBTConfig.preset("micro", num_classes=527, spec_channels=3)
HOSTILE = "<img src=x onerror=alert(1)>"


def audioset_names():
    """display_name of AudioSet's class_labels_indices.csv, read with the csv module."""
    with open(shared_path("real_annotations", "audioset", "class_labels_indices.csv"), newline="") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    flat = random_params(CONFIG)
    frames = np.random.default_rng(0).integers(0, 256, (30, 24, 32, 3), dtype=np.uint8)
    return {"flat": flat,
            "msgpack": write_official(root / "checkpoint_100", flat, rename=released_names),
            "npz": write_official(root / "checkpoint.npz", flat),
            "clip": media.write_video(root / "clip.mp4", frames, audio=media.tone(440, 1.2, 16000)),
            "silent": media.write_video(root / "silent.mp4", frames)}


def reference_logits(config, flat, path, modalities=("spec", "rgb")):
    """Logits per readout averaged over the 4 test views, from the model applied directly."""
    params = unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    got = views(path, config, 4)
    inputs = {"rgb": np.stack([v.frames for v in got]), "spec": np.stack([v.spectrogram for v in got])}
    logits, aux = MBT(config).apply({"params": params}, {m: inputs[m] for m in modalities}, train=False)
    mean = lambda v: {h: np.asarray(a).mean(0) for h, a in v.items()} if isinstance(v, dict) else np.asarray(v).mean(0)
    return {"fused": mean(logits), **{m: mean(v) for m, v in aux["per_modality"].items()}}


def printed_tables(text):
    """Section title -> the class names printed under it, in order."""
    tables, title = {}, None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            title = line.split(" (top")[0]
            tables[title] = []
        elif (match := re.match(r"  \d+\. [0-9.]+  (.*)$", line)):
            tables[title].append(match.group(1))
    return tables


def top_names(logits, names, k):
    return [names[i] for i in np.argsort(-(1 / (1 + np.exp(-logits))), kind="stable")[:k]]


def test_cli_prints_named_top_k_for_fused_and_each_modality(files, capsys):
    labels = shared_path("real_annotations", "audioset", "class_labels_indices.csv")
    main(["predict", str(files["msgpack"]), str(files["clip"]), "--top-k", "3", "--labels", str(labels),
          "model.fusion_layer=1"])
    tables = printed_tables(capsys.readouterr().out)
    want = reference_logits(CONFIG, files["flat"], files["clip"])
    names = audioset_names()
    assert tables == {"fused model": top_names(want["fused"], names, 3),
                      "audio only (spectrogram readout)": top_names(want["spec"], names, 3),
                      "visual only (RGB readout)": top_names(want["rgb"], names, 3)}


def test_a_clip_without_audio_is_read_from_its_frames(files, capsys):
    main(["predict", str(files["npz"]), str(files["silent"]), "model.fusion_layer=1"])
    text = capsys.readouterr().out
    assert "no audio track" in text and "audio only (spectrogram readout): absent" in text
    tables = printed_tables(text)
    want = reference_logits(CONFIG, files["flat"], files["silent"], modalities=("rgb",))
    # No labels given: 527 classes match the shipped AudioSet card.
    assert set(tables) == {"fused model", "visual only (RGB readout)"}
    assert tables["fused model"] == tables["visual only (RGB readout)"] == top_names(want["rgb"], audioset_names(), 5)


def test_fused_score_is_the_mean_of_the_modality_logits_on_the_official_fixture(tmp_path):
    """The reference Scenic model (token classifier): fused logits = mean of the CLS readouts (Sec. 3.3)."""
    fixture = shared_path("reference", "scenic_mbt", "bottleneck_token_fl2.npz")
    clip = media.write_video(tmp_path / "c.mp4", media.index_frames(25, 32, 40), audio=media.tone(300, 1, 16000))
    outcome = predict(load_checkpoint(fixture, {"fusion_layer": 2}), clip, top_k=5)
    logit = {r: np.log(s["class"] / (1 - s["class"])) for r, s in outcome.prediction.scores.items()}
    np.testing.assert_allclose(logit["fused"], (logit["rgb"] + logit["spec"]) / 2, atol=1e-4)
    assert [n for _, n, _ in outcome.prediction.top("fused", "class")] == [
        f"class {i}" for i in np.argsort(-logit["fused"], kind="stable")]


def test_epic_heads_named_from_the_real_verb_and_noun_lists(files, tmp_path):
    epic = shared_path("real_annotations", "epic_kitchens_100")
    config = CONFIG.replace(num_classes={"verb": 97, "noun": 300})
    flat = random_params(config, seed=3)
    checkpoint = write_official(tmp_path / "epic.npz", flat)
    model = load_checkpoint(checkpoint, {"fusion_layer": 1, "num_classes": {"verb": 97, "noun": 300}})
    # Files in either order: each is matched to its head by name.
    outcome = predict(model, files["clip"], 4, labels=[epic / "EPIC_100_noun_classes.csv",
                                                       epic / "EPIC_100_verb_classes.csv"])
    want = reference_logits(config, flat, files["clip"])
    for head, csv_name in (("verb", "EPIC_100_verb_classes.csv"), ("noun", "EPIC_100_noun_classes.csv")):
        with open(epic / csv_name, newline="") as f:
            keys = [row["key"] for row in csv.DictReader(f)]
        logits = want["fused"][head]
        softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = outcome.prediction.top("fused", head)
        assert [n for _, n, _ in top] == [keys[i] for i in np.argsort(-softmax, kind="stable")[:4]]
        np.testing.assert_allclose([s for *_, s in top], np.sort(softmax)[::-1][:4], rtol=1e-4)


def test_class_lists_of_the_real_annotation_files(tmp_path):
    root = shared_path("real_annotations")
    audioset = read_class_names(root / "audioset" / "class_labels_indices.csv")
    assert len(audioset.names) == 527 and audioset.names[0] == "Speech" and audioset.label_type == "multi_label"
    with open(root / "vggsound" / "stat.csv", newline="") as f:
        stat = [row[0] for row in csv.reader(f)]
    vgg = read_class_names(root / "vggsound" / "stat.csv")
    assert vgg.names == sorted(stat) and "bird chirping, tweeting" in vgg.names and vgg.label_type == "single_label"
    verbs = read_class_names(root / "epic_kitchens_100" / "EPIC_100_verb_classes.csv")
    assert len(verbs.names) == 97 and verbs.names[:3] == ["take", "put", "wash"]
    (tmp_path / "mine.txt").write_text("dog\ncat\n\n")
    assert read_class_names(tmp_path / "mine.txt").names == ["dog", "cat"]
    with pytest.raises(ValueError, match=r"EPIC_100_verb_classes.csv: 97 classes, but the model needs 527"):
        names_from_files([root / "epic_kitchens_100" / "EPIC_100_verb_classes.csv"], {"class": 527})
    with pytest.raises(ValueError, match="not a class list"):
        read_class_names(root / "audioset" / "balanced_train_segments_head300.csv")


class _Page(HTMLParser):
    """Script sources, image sources and the text of a page."""

    def __init__(self):
        super().__init__()
        self.scripts, self.images, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs.get("src"))
        if tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained_and_escapes_names(files, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{HOSTILE} {i}\n" for i in range(527)))
    clip = tmp_path / f"{HOSTILE}.mp4"
    clip.write_bytes(files["clip"].read_bytes())
    main(["predict", str(files["msgpack"]), str(clip), "--out", str(tmp_path / "out"), "--labels", str(labels),
          "--top-k", "2", "model.fusion_layer=1"])
    assert f"report: {tmp_path / 'out' / 'report.html'}" in capsys.readouterr().out
    tables = json.loads((tmp_path / "out" / "prediction.json").read_text())["top"]
    assert set(tables) == {"fused", "spec", "rgb"} and all(row["class"].startswith(HOSTILE) for row in tables["rgb"]["class"])
    text = (tmp_path / "out" / "report.html").read_text()
    page = _Page()
    page.feed(text)
    page.close()
    assert page.scripts and all(src is None for src in page.scripts)  # plotly.js inline, nothing fetched
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE)
    assert len(page.images) == 5 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert HOSTILE not in text and HOSTILE.replace("<", "\\u003c") not in text  # nor in the figures' JSON
    assert f"<td>{html.escape(HOSTILE)} " in text and f"{html.escape(HOSTILE)}.mp4" in text  # a class, the file
    assert "Where the model looked" in "".join(page.text) and "Tokenisation" in "".join(page.text)


@pytest.mark.parametrize("argv, message", [
    (["predict", "no-such-checkpoint", "x.mp4"], "mbt predict: checkpoint no-such-checkpoint: does not exist"),
    (["predict", "{npz}", "no-such.mp4", "model.fusion_layer=1"], "mbt predict: video no-such.mp4: does not exist"),
    (["predict", "{npz}", "{clip}"], "fusion_layer"),
    (["predict", "{npz}", "{clip}", "--top-k", "0"], "mbt predict: --top-k must be >= 1, got 0"),
    (["predict", "{dir}", "{clip}"], "not an mbt run directory"),
    (["predict", "{npz}", "{clip}", "--labels", "{verbs}", "model.fusion_layer=1"], "97 classes, but the model needs 527"),
])
def test_errors_are_one_line_with_status_2(files, capsys, argv, message):
    verbs = shared_path("real_annotations", "epic_kitchens_100", "EPIC_100_verb_classes.csv")
    argv = [a.format(npz=files["npz"], clip=files["clip"], dir=files["clip"].parent, verbs=verbs) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mbt predict: ") and message in err


def test_attention_rows_sum_to_one_and_respect_the_fusion_graph(files):
    from mbt_core.analysis.attention_maps import attention_row, fusion_share, layer_kind, queries

    for fusion in ("bottleneck", "cross_attention", "self_attention"):
        config = MBTConfig.preset("micro", fusion=fusion, fusion_layer=1)
        flat = random_params(config, seed=1)
        params = unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
        x = {"rgb": jax.random.normal(jax.random.PRNGKey(0), (1, 2, 8, 8, 3)),
             "spec": jax.random.normal(jax.random.PRNGKey(1), (1, 16, 8))}
        _, aux = MBT(config).apply({"params": params}, x, train=False, capture_attention=True)
        attention = {s: [np.asarray(a) for a in layers] for s, layers in aux["attention"].items()}
        assert [layer_kind(attention, config, l) for l in range(2)] == ["unfused", fusion]
        for layer in range(2):
            for query in queries(attention, config, layer):
                heads = [attention_row(attention, config, layer, query, h) for h in range(config.num_heads)]
                mean = attention_row(attention, config, layer, query, "mean")
                np.testing.assert_allclose(mean["maps"]["rgb"], np.mean([h["maps"]["rgb"] for h in heads], 0))
                total = sum(float(mean["maps"][m].sum()) + mean["cls"][m] for m in ("spec", "rgb"))
                fsn = 0.0 if mean["fusion"] is None else float(mean["fusion"].sum())
                # One stream's row sums to 1; a fusion token's map holds one row per stream (Eq. 8).
                assert total + (2 * fsn if query[0] == "fusion" else fsn) == pytest.approx(
                    2.0 if query[0] == "fusion" else 1.0)
        rgb_cls = attention_row(attention, config, 1, ("cls", "rgb"))
        crossed = float(rgb_cls["maps"]["spec"].sum()) + rgb_cls["cls"]["spec"]
        assert (crossed == 0.0) == (fusion == "bottleneck")  # in MBT only the fusion tokens cross (Sec. 3.2.2)
        share = fusion_share(attention, config)
        assert share["rgb"][0] == 0.0 and share["spec"][0] == 0.0 and share["rgb"][1] > 0
        if fusion == "bottleneck":
            n = config.num_tokens("rgb")
            assert share["rgb"][1] == pytest.approx(attention["rgb"][1][0].mean(0)[0, n:].sum())
            with pytest.raises(ValueError, match="layer 1 has no query fusion token 1"):
                attention_row(attention, config, 0, ("fusion", 0))


def test_a_clip_shorter_than_the_window_is_noted(files, tmp_path):
    short = media.write_video(tmp_path / "short.mp4", media.index_frames(3, 24, 32), audio=media.tone(440, 0.12, 16000))
    model = load_checkpoint(files["npz"], {"fusion_layer": 1})
    assert any("padded" in note for note in predict(model, short, top_k=2).prediction.notes)
    assert not any("padded" in note for note in predict(model, files["clip"], top_k=2).prediction.notes)


def test_pages_show_paths_relative_to_the_notebook(tmp_path):
    from mbt_core.predict import with_relative_paths

    (tmp_path / "sweep" / "run").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    text = f"run directory {tmp_path / 'sweep' / 'run'} (latest); clip: {tmp_path / 'data' / 'gone.mp4'}, 3 views"
    assert with_relative_paths(text, tmp_path / "notebooks") == (
        f"run directory ../sweep/run (latest); clip: {tmp_path / 'data' / 'gone.mp4'}, 3 views")
