"""The synthetic benchmark: labels follow the stated rules, pairing labels need fusion, media encode the attributes.

Independent references: the rules written out by hand, exact counts, scikit-learn's logistic
regression and average precision, an FFT of the decoded audio, librosa's mel filter bank, the
decoded colours, and the tokeniser's crop geometry computed from its definition.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import csv  # noqa: E402
import filecmp  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import av  # noqa: E402
import librosa  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mbt_core.config import MBTConfig  # noqa: E402
from mbt_core.data.tokenise import tokenise  # noqa: E402
from mbt_core.datasets import card_path, read_card, read_manifest  # noqa: E402
from mbt_core.datasets import synthetic as synth  # noqa: E402
from mbt_core.datasets import synthetic_media as media  # noqa: E402
from mbt_core.datasets.cards import SECTIONS  # noqa: E402
from mbt_core.media import audio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VISUAL = ("circle_warm", "square_present")
AUDIO = ("low_hum", "high_hum")
PAIRS = {"circle_warm_xor_high_hum": ("circle_warm", "high_hum"),
         "square_present_xor_low_hum": ("square_present", "low_hum")}
BINDINGS = {"circle_warm_xor_high_hum_and_square_present_xor_low_hum": (("circle_warm", "high_hum"),
                                                                        ("square_present", "low_hum")),
            "circle_warm_xor_low_hum_and_square_present_xor_high_hum": (("circle_warm", "low_hum"),
                                                                        ("square_present", "high_hum"))}


def expected_labels(row):
    """The card's rules, written out independently of the generator."""
    on = {k: row[k] == "1" for k in (*VISUAL, *AUDIO, "circle_is_sound_source")}
    labels = {k for k in (*AUDIO, *VISUAL, "circle_is_sound_source") if on[k]}
    if on["circle_warm"] != on["high_hum"]:
        labels.add("circle_warm_xor_high_hum")
    if on["square_present"] != on["low_hum"]:
        labels.add("square_present_xor_low_hum")
    for name, pairs in BINDINGS.items():
        if all(on[a] != on[b] for a, b in pairs):
            labels.add(name)
    return labels


def attribute_rows(out_dir):
    with open(Path(out_dir) / "attributes.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """12 clips written in-process: the smallest valid benchmark."""
    out = tmp_path_factory.mktemp("synth12")
    return synth.generate(out, num_clips=12, seed=5, workers=1, progress=False)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """96 clips written by two worker processes, each decoded as the suite's model (`tiny-48`) sees it."""
    out = tmp_path_factory.mktemp("synth96")
    result = synth.generate(out, num_clips=96, seed=0, workers=2, progress=False)
    records, classes = read_manifest(result.manifest, list(result.classes))
    config = MBTConfig.preset("tiny-48")
    views = [tokenise(out / r.video, config) for r in records]
    return {"result": result, "records": records, "classes": classes, "rows": attribute_rows(out),
            "frames": np.stack([(v.frames + 1.0) * 127.5 for v in views]),  # (N, 16, 48, 48, 3) in [0, 255]
            "spec": np.stack([v.spectrogram for v in views]), "times": views[0].frame_times}


def out_of_fold_ap(features, y):
    """AP of 5-fold out-of-fold logistic-regression scores."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return average_precision_score(y, cross_val_predict(model, features, y, cv=folds, method="predict_proba")[:, 1])


# ----- labels and their balance -----

def test_manifest_labels_follow_the_rules_from_the_attributes(small):
    records, classes = read_manifest(small.manifest, read_card(small.card)["classes"])
    rows = {row["clip_id"]: row for row in attribute_rows(small.out_dir)}

    assert len(records) == len(rows) == 12
    for record in records:
        assert {classes[i] for i in record.labels} == expected_labels(rows[record.clip_id])
        assert record.split == rows[record.clip_id]["split"] and (Path(small.out_dir) / record.video).is_file()


@pytest.mark.parametrize("num_clips", [12, 24, 1002, 2000])
def test_attribute_rates_are_exactly_half_and_pairing_labels_independent_of_each_attribute(num_clips):
    rows = synth.plan(num_clips, seed=num_clips)
    for split in ("train", "val", "test"):
        part = [r for r in rows if r["split"] == split]
        assert len(part) % 2 == 0
        on = {k: np.array([r[k] for r in part]) for k in synth.ATTRIBUTES}
        for name in synth.ATTRIBUTES:
            assert on[name].sum() * 2 == len(part), (split, name)
        for label, (a, b) in PAIRS.items():
            y = on[a] ^ on[b]
            if len(part) % 4 == 0:
                assert y.sum() * 2 == len(part), (split, label)
            for name in synth.ATTRIBUTES:  # P(label | attribute) = P(label), exactly
                assert y[on[name]].sum() * len(part) == y.sum() * on[name].sum(), (split, label, name)


def test_full_blocks_are_full_factorials_where_binding_labels_are_a_quarter_whatever_one_modality_shows():
    rows = synth.plan(320, seed=1)  # splits of 256, 32 and 32 clips: whole blocks of 2^5
    for split in ("train", "val", "test"):
        part = [r for r in rows if r["split"] == split]
        bits = np.array([[r[k] for k in synth.ATTRIBUTES] for r in part])
        combos = np.unique(bits, axis=0, return_counts=True)[1]
        assert len(combos) == 32 and (combos == len(bits) // 32).all()
        on = {k: np.array([r[k] for r in part]) for k in synth.ATTRIBUTES}
        for name, pairs in BINDINGS.items():
            y = np.logical_and.reduce([on[a] ^ on[b] for a, b in pairs])
            assert y.sum() * 4 == len(part), (split, name)
            for modality in (VISUAL, AUDIO):  # P(label | both attributes of one modality) = 1/4, exactly
                for values in ((0, 0), (0, 1), (1, 0), (1, 1)):
                    given = (on[modality[0]] == values[0]) & (on[modality[1]] == values[1])
                    assert y[given].sum() * 4 == given.sum(), (split, name, modality, values)


def test_every_class_has_positives_and_negatives_in_every_split(small):
    records, classes = read_manifest(small.manifest, list(small.classes))
    kinds = synth.class_kinds()
    for split in ("train", "val", "test"):
        part = [r for r in records if r.split == split]
        counts = np.bincount([i for r in part for i in r.labels], minlength=len(classes))
        # A binding class (rate 1/4) may have no positive in a 4-clip split: the default sizes have plenty.
        counts = np.array([c for c, name in zip(counts, classes) if kinds[name] != "binding"])
        assert (counts > 0).all() and (counts < len(part)).all(), (split, counts)
    for split in ("train", "val", "test"):
        part = [r for r in synth.plan(2000, seed=11) if r["split"] == split]
        for name in synth.class_kinds("binding"):
            assert 0.2 < np.mean([synth.class_value(name, r) for r in part]) < 0.3, (split, name)


def test_plan_is_deterministic_by_seed_and_differs_across_seeds():
    assert synth.plan(40, seed=3) == synth.plan(40, seed=3)
    assert [r["circle_warm"] for r in synth.plan(40, seed=3)] != [r["circle_warm"] for r in synth.plan(40, seed=4)]


# ----- fusion is needed: linear unimodal models stay at the positive rate -----

def slot_indicators(rows, column):
    """(N, slots) 1 where an event of `column` starts in that slot."""
    out = np.zeros((len(rows), media.SLOTS))
    for i, row in enumerate(rows):
        for t in filter(None, row[column].split(";")):
            out[i, int(float(t) // media.slot_seconds(4.0))] = 1.0
    return out


def test_linear_models_on_one_modalitys_attributes_stay_at_the_positive_rate():
    rows = synth.plan(2000, seed=0)
    train = np.array([r["split"] == "train" for r in rows])

    def held_out_ap(features, y):
        model = LogisticRegression(max_iter=2000).fit(features[train], y[train])
        return average_precision_score(y[~train], model.predict_proba(features[~train])[:, 1])

    column = {k: np.array([float(r[k]) for r in rows]) for k in (*VISUAL, *AUDIO, "circle_hue", "circle_left",
                                                                  "low_hum_gain", "high_hum_gain", "distractor_hum")}
    visual = np.c_[[column[k] for k in (*VISUAL, "circle_hue", "circle_left")]].T
    sound = np.c_[[column[k] for k in (*AUDIO, "low_hum_gain", "high_hum_gain", "distractor_hum")]].T
    for label, (a, b) in PAIRS.items():
        y = (column[a] != column[b]).astype(int)
        rate = y[~train].mean()
        for features in (visual, sound, np.hstack([visual, sound])):  # the last: late fusion, linear
            assert abs(held_out_ap(features, y) - rate) < 0.1, label
        product = (2 * column[a] - 1) * (2 * column[b] - 1)
        assert held_out_ap(np.c_[visual, sound, product], y) > 0.99, label
    for label, pairs in BINDINGS.items():  # two facts of each modality: linear models stay at 1/4
        y = np.logical_and.reduce([column[a] != column[b] for a, b in pairs]).astype(int)
        rate = y[~train].mean()
        for features in (visual, sound, np.hstack([visual, sound])):
            assert abs(held_out_ap(features, y) - rate) < 0.1, label
        both = np.prod([(2 * column[a] - 1) * (2 * column[b] - 1) < 0 for a, b in pairs], axis=0)
        assert held_out_ap(np.c_[visual, sound, both], y) > 0.99, label

    # Synchrony: beep slots (audio) or pulse slots (visual) alone say nothing; their overlap says all.
    y = np.array([r["circle_is_sound_source"] for r in rows], int)
    beeps, circle, square = (slot_indicators(rows, c) for c in ("beep_times", "circle_pulse_times",
                                                                 "square_pulse_times"))
    rate = y[~train].mean()
    for features in (beeps, np.hstack([circle, square]), np.hstack([beeps, circle, square])):
        assert abs(held_out_ap(features, y) - rate) < 0.1
    assert held_out_ap((beeps * circle).sum(1, keepdims=True), y) > 0.99


def twin_views(tmp_path, flip, count=2, seed=7):
    """Clips rendered twice from the same random stream, the second with attribute `flip` negated."""
    rows, views = synth.plan(12, seed=seed)[:count], []
    for i, row in enumerate(rows):
        for j, value in enumerate((row[flip], not row[flip])):
            attributes = {k: (value if k == flip else row[k]) for k in synth.ATTRIBUTES}
            scene = {"clip_id": row["clip_id"], "split": row["split"],
                     **media.sample_scene(attributes, np.random.default_rng([seed, 1, i]), 4.0, 0.1)}
            path = tmp_path / f"{flip}_{i}_{j}.mp4"
            synth.write_clip((str(path), scene, 64, 4.0, "twin"))
            views.append((scene, tokenise(path, MBTConfig.preset("tiny-48"))))
    return views


@pytest.mark.parametrize("flip,label,same", [
    ("circle_warm", "circle_warm_xor_high_hum", "spectrogram"),
    ("square_present", "square_present_xor_low_hum", "spectrogram"),
    ("high_hum", "circle_warm_xor_high_hum", "frames"),
    ("low_hum", "square_present_xor_low_hum", "frames"),
    ("circle_is_sound_source", "circle_is_sound_source", "spectrogram")])
def test_one_modality_alone_cannot_tell_a_pairing_label(tmp_path, flip, label, same):
    # Counterfactual twins: flipping an attribute of one modality flips the label and leaves the other
    # modality's decoded input bit for bit the same, so any model of that modality alone scores the
    # twins equally: AP is exactly the positive rate, 0.5, even for a model fit on these very clips.
    views = twin_views(tmp_path, flip)
    y = np.array([int(synth.class_value(label, scene)) for scene, _ in views])
    assert (y[0::2] != y[1::2]).all()
    inputs = [getattr(v, same) for _, v in views]
    assert all(np.array_equal(a, b) for a, b in zip(inputs[0::2], inputs[1::2]))
    other = [getattr(v, "frames" if same == "spectrogram" else "spectrogram") for _, v in views]
    assert not any(np.array_equal(a, b) for a, b in zip(other[0::2], other[1::2]))
    # Mean colour per frame, or mean energy per mel band.
    features = np.stack([x.mean((1, 2)).reshape(-1) if same == "frames" else x.mean(0) for x in inputs])
    scores = LogisticRegression(max_iter=2000).fit(features, y).predict_proba(features)[:, 1]
    assert average_precision_score(y, scores) == pytest.approx(0.5)


def test_decoded_media_features_carry_their_modalitys_attributes_and_the_product_solves_pairing(decoded):
    rows, frames, spec = decoded["rows"], decoded["frames"], decoded["spec"]
    on = {k: np.array([int(r[k]) for r in rows]) for k in (*VISUAL, *AUDIO)}
    # Mean colour and bright-grey area of each of the 16 frames (the square is grey, the background dark,
    # the circle saturated even when it pulses).
    grey = ((frames.min(-1) > 120) & (frames.max(-1) - frames.min(-1) < 40)).mean((2, 3))
    colour = np.c_[frames.mean((2, 3)).reshape(len(rows), -1), grey]
    bands = spec.mean(1)  # mean log-mel energy of each of the 32 bands
    for name in VISUAL:
        assert out_of_fold_ap(colour, on[name]) > 0.9, name
    for name in AUDIO:
        assert out_of_fold_ap(bands, on[name]) > 0.9, name
    saturated = (frames.max(-1) - frames.min(-1)) > 80  # the circle (and rare coloured distractors)
    warmth = np.array([f[s][:, 0].mean() - f[s][:, 2].mean() for f, s in zip(frames, saturated)])
    warm, high = warmth - np.median(warmth), bands[:, 12] - np.median(bands[:, 12])
    y = on["circle_warm"] ^ on["high_hum"]
    assert y.mean() == 0.5
    assert out_of_fold_ap(np.c_[warm, high], y) < 0.7  # linear in both modalities: late fusion
    assert out_of_fold_ap(np.c_[warm, high, warm * high], y) > 0.95


# ----- the media encode the attributes, visibly at the tiny preset's resolution -----

def test_hums_are_the_dominant_tones_of_the_decoded_audio(decoded):
    rows = decoded["rows"]
    freqs = np.fft.rfftfreq(4 * audio.SAMPLE_RATE, 1.0 / audio.SAMPLE_RATE)
    for record, row in zip(decoded["records"], rows):
        wave = audio.load_audio(decoded["result"].out_dir / record.video, 0.0, 4.0)
        magnitude = np.abs(np.fft.rfft(wave.samples))
        floor = np.median(magnitude)
        for name, hz in (("low_hum", 280.0), ("high_hum", 1200.0)):
            peak = magnitude[np.abs(freqs - hz) < 5].max()
            assert (peak > 50 * floor) == (row[name] == "1"), (record.clip_id, name)
        hums = [hz for name, hz in (("low_hum", 280.0), ("high_hum", 1200.0)) if row[name] == "1"]
        if len(hums) == 1 and row["distractor_hum"] == "0":
            below = freqs < 2000
            assert freqs[below][np.argmax(magnitude[below])] == pytest.approx(hums[0], abs=1.0)


def test_tones_fall_in_distinct_mel_bins_and_light_them_up(decoded):
    bank = librosa.filters.mel(sr=16000, n_fft=400, n_mels=32, fmin=0.0, fmax=8000.0)
    bins = [int(np.argmax(bank[:, int(round(hz / 40))])) for hz in (280, 640, 1200, 3440)]
    assert bins == [2, 6, 12, 23]
    bands = decoded["spec"].mean(1)
    for name, b in (("low_hum", 2), ("high_hum", 12)):
        on = np.array([r[name] == "1" for r in decoded["rows"]])
        assert bands[on, b].min() > bands[~on, b].max() + 3.0  # log units: a wide gap


def test_circle_colour_is_warm_or_cool_as_labelled_after_resize_and_crop(decoded):
    for frames, row in zip(decoded["frames"], decoded["rows"]):
        if row["distractor_dot"] == "1" or float(row["square_saturation"]) > 0:
            continue  # another coloured object in view
        saturated = (frames.max(-1) - frames.min(-1)) > 80
        assert (saturated.sum((1, 2)) >= 40).all(), row["clip_id"]  # the circle, in every frame
        red, blue = frames[saturated][:, 0].mean(), frames[saturated][:, 2].mean()
        assert (red > blue + 60) == (row["circle_warm"] == "1") and abs(red - blue) > 60, row["clip_id"]


def test_pulse_synchrony_is_visible_in_the_tokenised_view(decoded):
    frames, spec, times = decoded["frames"], decoded["spec"], decoded["times"]
    area = ((frames.max(-1) - frames.min(-1)) > 80).sum((2, 3)).astype(float)  # circle grows when it pulses
    beep = spec[:, :, 23]
    # The beep's loudness at each sampled frame (log-mel frames every 10 ms).
    recent = np.stack([[b[max(0, int(round(t * 100)) - 5):int(round(t * 100)) + 6].max() for t in times] for b in beep])
    a, b = area - area.mean(1, keepdims=True), recent - recent.mean(1, keepdims=True)
    sync = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-9)
    y = np.array([int(r["circle_is_sound_source"]) for r in decoded["rows"]])
    assert average_precision_score(y, sync) > 0.95


def test_shapes_are_large_and_stay_inside_the_tiny_centre_crop():
    size = MBTConfig.preset("tiny-48").image_size
    short = round(size * 256 / 224)  # the tokeniser's resize of the short side
    lo, hi = ((short - size) // 2) / short, ((short - size) // 2 + size) / short
    for row in synth.plan(2000, seed=2, difficulty=1.0):
        for shape, half in (("circle", row["circle_radius"]), ("square", row["square_half"])):
            assert 2 * half >= 0.25  # at least a quarter of the frame across
            reach = half * media.PULSE_SCALE
            assert lo <= row[f"{shape}_x"] - row[f"{shape}_drift_x"] - reach
            assert row[f"{shape}_x"] + row[f"{shape}_drift_x"] + reach <= hi
            assert lo <= row[f"{shape}_y"] - row[f"{shape}_drift_y"] - reach
            assert row[f"{shape}_y"] + row[f"{shape}_drift_y"] + reach <= hi


# ----- files: card, determinism, resume, CLI -----

CLASS_ROW = re.compile(r"^\| ([^|]+?) \| ([^|]+?) \|$", re.MULTILINE)


def test_generated_card_parses_and_lists_each_class_once(small):
    card = read_card(small.card)
    records, _ = read_manifest(small.manifest, card["classes"])
    rows = CLASS_ROW.findall(Path(small.card).read_text())
    table = [(name, kind) for name, kind in rows if name != "class name"]

    assert sorted(p.name for p in Path(small.out_dir).rglob("*.md")) == ["data_card.md"]
    assert card["classes"] == list(small.classes) == [name for name, _ in table]
    assert dict(table) == card["class_kinds"]
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", name) for name in card["classes"])
    assert set(card["class_kinds"].values()) == {"audio", "visual", "pairing", "binding", "pairing_temporal"}
    assert (card["label_type"], card["metric"], card["fps"], card["clip_seconds"], card["seed"]) == (
        "multi_label", "mAP", 25, 4.0, 5)
    assert {s: v["clips"] for s, v in card["splits"].items()} == {
        s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    assert card["generator"]["num_clips"] == 12 and card["generator"]["difficulty"] == 0.1
    assert card["licence"] and card["source"]


def test_static_card_is_the_default_generated_card():
    front = synth.card_front_matter(synth.class_kinds(), num_clips=2000, seed=0, clip_seconds=4.0, size=64,
                                    difficulty=0.1)
    assert card_path("synthetic").read_text(encoding="utf-8") == synth.card_text(front)
    card = read_card("synthetic")
    keys = ("name", "classes", "label_type", "metric", "clip_seconds", "fps", "spectrogram", "splits",
            "licence", "source", "citation", "availability")
    assert [k for k in keys if k not in card] == []
    assert [s for s in SECTIONS if len(card["sections"].get(s, "")) < 100] == []
    uses = card["sections"]["Intended uses"]  # the measured grid: which variants learn each kind
    assert all(f"`{kind}`" in uses for kind in synth.KINDS)


def test_kinds_select_the_classes(tmp_path):
    result = synth.generate(tmp_path, num_clips=12, seed=5, kinds=["pairing"], workers=1, progress=False)
    card = read_card(result.card)
    records, classes = read_manifest(result.manifest, card["classes"])
    assert classes == ["circle_warm_xor_high_hum", "square_present_xor_low_hum"]
    assert len(CLASS_ROW.findall(result.card.read_text())) == 1 + len(classes)
    assert all(r.labels in ((), (0,), (1,), (0, 1)) for r in records)


def assert_same_clip(a: Path, b: Path) -> None:
    """Two renderings of one clip: the same fingerprint and audio, frames equal up to x264's run-to-run noise.

    libx264 at threads=1 still gives a few different bytes from one encode of the same frames to the next
    (seen here: about 1 in 3 encodes, mean 1.5 grey levels apart), so bytes are not compared.
    """
    with av.open(str(a)) as fa, av.open(str(b)) as fb:
        assert fa.metadata["comment"] == fb.metadata["comment"]  # the fingerprint of the clip's parameters
    config = MBTConfig.preset("tiny")
    views = [tokenise(p, config) for p in (a, b)]
    assert views[0].frames.shape == views[1].frames.shape
    np.testing.assert_array_equal(views[0].spectrogram, views[1].spectrogram)
    assert np.abs(views[0].frames - views[1].frames).mean() < 0.05  # [-1, 1] scale: < 3% of a grey level range


def test_cli_with_two_workers_writes_the_same_data_as_generate(small, tmp_path):
    subprocess.run([sys.executable, "-m", "mbt_core.cli", "synth", "--out", str(tmp_path), "--num-clips", "12",
                    "--seed", "5"], check=True, timeout=300, cwd=ROOT)
    match, mismatch, errors = filecmp.cmpfiles(small.out_dir, tmp_path, ["manifest.csv", "attributes.csv",
                                                                         "data_card.md"], shallow=False)
    assert (mismatch, errors) == ([], [])
    for i in range(12):
        assert_same_clip(Path(small.out_dir) / "clips" / f"synth_{i:06d}.mp4", tmp_path / "clips" / f"synth_{i:06d}.mp4")


def test_rerun_keeps_valid_clips_and_rewrites_missing_or_broken_ones(small, tmp_path):
    out = tmp_path / "copy"
    synth.generate(out, num_clips=12, seed=5, workers=1, progress=False)
    (out / "clips" / "synth_000003.mp4").unlink()
    broken = out / "clips" / "synth_000007.mp4"
    broken.write_bytes(broken.read_bytes()[:1000])  # truncated
    result = synth.generate(out, num_clips=12, seed=5, workers=1, progress=False)
    assert (result.written, result.kept) == (2, 10)
    assert_same_clip(broken, Path(small.out_dir) / "clips" / "synth_000007.mp4")
    # Other parameters change the clips' content: every clip is rewritten.
    assert synth.generate(out, num_clips=12, seed=5, difficulty=0.3, workers=1, progress=False).written == 12


@pytest.mark.parametrize("kwargs,field", [({"num_clips": 5}, "num_clips"), ({"kinds": ["smell"]}, "kinds"),
                                          ({"difficulty": 2.0}, "difficulty"), ({"clip_seconds": 1.0}, "clip_seconds"),
                                          ({"size": 16}, "size"), ({"seed": -1}, "seed")])
def test_bad_parameters_are_named(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=field):
        synth.generate(tmp_path, **{"num_clips": 12, **kwargs}, workers=1, progress=False)
