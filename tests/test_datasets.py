"""Annotation readers against the real AudioSet, VGGSound and EPIC-KITCHENS-100 excerpts.

Expected values come from the files by another route (plain string splitting, ontology.json,
`sort | sha256sum`), not from the csv module the readers use.
"""
import dataclasses
import json
import math
import shutil
import subprocess

import pytest

from mbt_core.datasets import (ClipRecord, availability_record, locate, read_audioset, read_epic,
                               read_manifest, read_vggsound, write_manifest)
from mbt_core.datasets.audioset import read_audioset_classes
from mbt_core.datasets.epic import read_epic_classes, read_epic_video_info
from mbt_core.datasets.records import AnnotationError, HeadLabels
from mbt_core.datasets.vggsound import vggsound_classes
from shared import shared_path


def audioset_files():
    return (shared_path("real_annotations", "audioset", "balanced_train_segments_head300.csv"),
            shared_path("real_annotations", "audioset", "class_labels_indices.csv"))


def epic_file(name):
    return shared_path("real_annotations", "epic_kitchens_100", name)


def read_epic_head(**kwargs):
    return read_epic(epic_file("EPIC_100_validation_head300.csv"),
                     epic_file("EPIC_100_verb_classes.csv"), epic_file("EPIC_100_noun_classes.csv"),
                     **kwargs)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- AudioSet


def test_audioset_records_match_the_file_read_by_string_splitting():
    segments, labels_csv = audioset_files()
    mid_index = {}
    for line in labels_csv.read_text().splitlines()[1:]:
        index, mid, _ = line.split(",", 2)
        mid_index[mid] = int(index)
    expected = []
    for line in segments.read_text().splitlines()[1:]:
        ytid, start, end, mids = line.split(",", 3)
        expected.append((ytid, float(start), float(end),
                         sorted(mid_index[m] for m in mids.strip('"').split(","))))

    records = read_audioset(segments, labels_csv)

    assert len(mid_index) == 527 and len(records) == 300
    assert [(r.video, r.start, r.end, sorted(r.labels)) for r in records] == expected
    assert [r.clip_id for r in records] == [f"{v}_{int(s) * 1000}" for v, s, _, _ in expected]
    assert all(0 < r.end - r.start <= 10 for r in records)  # 4 segments end early with their video
    assert len({r.clip_id for r in records}) == 300


def test_audioset_known_row_by_ontology_display_names():
    segments, labels_csv = audioset_files()
    ontology = json.loads(shared_path("real_annotations", "audioset", "ontology.json").read_text())
    name_of = {entry["id"]: entry["name"] for entry in ontology}
    names = [name for _, name in read_audioset_classes(labels_csv)]

    first = read_audioset(segments, labels_csv)[0]  # --PJHxphWEs,30.000,40.000,"/m/09x0r,/t/dd00088"

    assert first.clip_id == "--PJHxphWEs_30000"
    assert {names[i] for i in first.labels} == {name_of["/m/09x0r"], name_of["/t/dd00088"]}
    assert name_of["/m/09x0r"] == "Speech"


def test_audioset_official_comment_form_gives_identical_records(tmp_path):
    segments, labels_csv = audioset_files()
    lines = segments.read_text().splitlines()
    official = ["# Segments csv created Sun Mar  5 10:54:31 2017",
                "# num_ytids=300, num_segs=300, num_unique_labels=527, num_positive_labels=999",
                "# YTID, start_seconds, end_seconds, positive_labels"]
    for line in lines[1:]:
        ytid, start, end, mids = line.split(",", 3)
        official.append(", ".join([ytid, start, end, mids]))
    path = write(tmp_path / "balanced_train_segments.csv", "\n".join(official) + "\n")

    assert read_audioset(path, labels_csv) == read_audioset(segments, labels_csv)


def test_audioset_unknown_label_names_file_line_and_id_or_is_skipped(tmp_path):
    _, labels_csv = audioset_files()
    path = write(tmp_path / "segs.csv", "# c\n# c\n# YTID, start_seconds, end_seconds, labels\n"
                 'aaaaaaaaaaa, 0.000, 10.000, "/m/09x0r"\n'
                 'bbbbbbbbbbb, 0.000, 10.000, "/m/09x0r,/m/not_a_class"\n'
                 'ccccccccccc, 5.000, 15.000, "/m/05zppz"\n')

    with pytest.raises(AnnotationError, match=r"segs\.csv, line 5: .*/m/not_a_class"):
        read_audioset(path, labels_csv)
    records = read_audioset(path, labels_csv, on_error="skip")
    report = records.report

    assert [r.video for r in records] == ["aaaaaaaaaaa", "ccccccccccc"]
    assert report.count == 1 and report.skipped[0][0] == 5
    assert "/m/not_a_class" in str(report)


@pytest.mark.parametrize("row, problem", [
    ("aaaaaaaaaaa, 0.000, 10.000", "expected 4 columns"),
    ('aaaaaaaaaaa, zero, 10.000, "/m/09x0r"', "start_seconds 'zero' is not a number"),
    ('aaaaaaaaaaa, 20.000, 10.000, "/m/09x0r"', "end 10 s is before start 20 s"),
    ('aaaaaaaaaaa, nan, 10.000, "/m/09x0r"', "must be finite"),
])
def test_audioset_bad_row_names_file_and_line(tmp_path, row, problem):
    _, labels_csv = audioset_files()
    path = write(tmp_path / "bad.csv", 'YTID,start_seconds,end_seconds,positive_labels\n'
                 'zzzzzzzzzzz,0.000,10.000,"/m/09x0r"\n' + row + "\n")

    with pytest.raises(AnnotationError, match=r"bad\.csv, line 3: ") as error:
        read_audioset(path, labels_csv)
    assert problem in str(error.value)


def test_on_error_must_be_raise_or_skip():
    with pytest.raises(ValueError, match="on_error"):
        read_audioset(*audioset_files(), on_error="ignore")


# ---------------------------------------------------------------- VGGSound


def stat_names():
    names = []
    for line in shared_path("real_annotations", "vggsound", "stat.csv").read_text().splitlines():
        names.append(line[1:line.index('"', 1)] if line.startswith('"') else line.split(",")[0])
    return names


def test_vggsound_classes_are_the_sorted_stat_names():
    classes = vggsound_classes(shared_path("real_annotations", "vggsound", "stat.csv"))

    assert len(classes) == 309
    assert classes == sorted(stat_names()) and classes != stat_names()


def test_vggsound_file_name_form_matches_string_splitting():
    path = shared_path("real_annotations", "vggsound", "test_head300.csv")
    classes = sorted(stat_names())
    expected = []
    for line in path.read_text().splitlines():
        name, label = line.split(",", 1)
        ytid, start = name[:-len(".mp4")].rsplit("_", 1)
        expected.append((f"{ytid}_{start}", ytid, int(start), label.strip('"')))

    records = read_vggsound(path, split="test")

    assert [(r.clip_id, r.video, r.start, classes[r.labels]) for r in records] == expected
    assert all(r.end == r.start + 10 and r.split == "test" for r in records)


def test_vggsound_official_form_with_quoted_commas(tmp_path):
    path = write(tmp_path / "vggsound.csv", "---g-f_I2yQ,1,people marching,test\n"
                 '--9O4XZOge4,30,"female speech, woman speaking",train\n')
    classes = sorted(stat_names())

    marching, speech = read_vggsound(path)

    assert marching == ClipRecord("---g-f_I2yQ_000001", 1.0, 11.0, classes.index("people marching"),
                                  video="---g-f_I2yQ", split="test")
    assert classes[speech.labels] == "female speech, woman speaking"
    assert (speech.start, speech.end, speech.split) == (30.0, 40.0, "train")


def test_vggsound_indices_do_not_depend_on_the_classes_in_the_file(tmp_path):
    path = write(tmp_path / "one.csv", "zzzzzzzzzzz_000010.mp4,yodelling\n")

    (record,) = read_vggsound(path)

    assert record.labels == sorted(stat_names()).index("yodelling") != 0


@pytest.mark.parametrize("row, problem", [
    ("abc,10,dog barking", "expected 4 or 2 columns"),
    ("abc,ten,dog barking,train", "start 'ten' is not a number"),
    ("abc,1.5,dog barking,train", "not whole seconds"),
    ("abc.mp4,dog barking", "not of the form"),
    ("abc,10,purring loudly,train", "unknown class 'purring loudly'"),
])
def test_vggsound_bad_row_names_file_and_line(tmp_path, row, problem):
    path = write(tmp_path / "bad.csv", "abc,10,dog barking,train\n" + row + "\n")

    with pytest.raises(AnnotationError, match=r"bad\.csv, line 2: ") as error:
        read_vggsound(path)
    assert problem in str(error.value)


# ---------------------------------------------------------------- EPIC-KITCHENS-100


def timestamp_seconds(text):
    return sum(float(part) * 60 ** i for i, part in enumerate(reversed(text.split(":"))))


def test_epic_records_match_the_file_read_by_string_splitting():
    lines = epic_file("EPIC_100_validation_head300.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = {name: header.index(name) for name in header}
    expected = []
    for line in lines[1:]:
        f = line.split(",")  # the first 13 columns hold no commas in this excerpt
        expected.append((f[col["narration_id"]], f[col["video_id"]],
                         timestamp_seconds(f[col["start_timestamp"]]),
                         timestamp_seconds(f[col["stop_timestamp"]]),
                         {"verb": int(f[col["verb_class"]]), "noun": int(f[col["noun_class"]])}))

    records = read_epic_head(split="validation")

    assert len(records) == 300
    assert [(r.clip_id, r.video, r.start, r.end, dict(r.labels)) for r in records] == [
        (i, v, pytest.approx(s), pytest.approx(e), l) for i, v, s, e, l in expected]
    assert all(r.split == "validation" for r in records)


def test_epic_known_row_and_class_keys():
    verbs = read_epic_classes(epic_file("EPIC_100_verb_classes.csv"))
    nouns = read_epic_classes(epic_file("EPIC_100_noun_classes.csv"))

    # P01_11_1,...,00:00:01.56,00:00:02.45,...,put down plate,put-down,1,plate,2,...
    record = read_epic_head()[1]

    assert (len(verbs), len(nouns)) == (97, 300)
    assert record.clip_id == "P01_11_1" and (record.start, record.end) == (1.56, 2.45)
    assert (verbs[record.labels["verb"]], nouns[record.labels["noun"]]) == ("put", "plate")
    assert record.labels == {"verb": 1, "noun": 2}
    assert len({record, dataclasses.replace(record)}) == 1  # hashable, equal by value


def test_epic_class_ids_are_validated(tmp_path):
    lines = epic_file("EPIC_100_validation_head300.csv").read_text().splitlines()
    f = lines[1].split(",")
    f[10] = "97"  # verb_class: ids run 0..96
    path = write(tmp_path / "EPIC_100_validation.csv", "\n".join([lines[0], lines[2], ",".join(f)]))

    with pytest.raises(AnnotationError, match=r"EPIC_100_validation\.csv, line 3: verb_class '97'"):
        read_epic(path, epic_file("EPIC_100_verb_classes.csv"), epic_file("EPIC_100_noun_classes.csv"))


@pytest.mark.parametrize("start, stop, problem", [
    ("00:00:01.00", "00:00:00.50", "before start"),
    ("00:00:1.00.5", "00:00:02.00", "is not HH:MM:SS.ff"),
    ("00:61:00.00", "01:02:00.00", "is not HH:MM:SS.ff"),
])
def test_epic_bad_timestamps(tmp_path, start, stop, problem):
    lines = epic_file("EPIC_100_validation_head300.csv").read_text().splitlines()
    f = lines[1].split(",")
    f[4], f[5] = start, stop
    path = write(tmp_path / "ann.csv", "\n".join([lines[0], ",".join(f)]))

    with pytest.raises(AnnotationError, match=r"ann\.csv, line 2: ") as error:
        read_epic(path, epic_file("EPIC_100_verb_classes.csv"), epic_file("EPIC_100_noun_classes.csv"))
    assert problem in str(error.value)


def test_epic_missing_column_is_named(tmp_path):
    path = write(tmp_path / "ann.csv", "narration_id,video_id,start_timestamp,stop_timestamp\n")

    with pytest.raises(AnnotationError, match="verb_class, noun_class"):
        read_epic(path, epic_file("EPIC_100_verb_classes.csv"), epic_file("EPIC_100_noun_classes.csv"))


def test_epic_video_info():
    path = epic_file("EPIC_100_video_info.csv")
    first = path.read_text().splitlines()[1].split(",")  # P01_01,1652.152817,59.94...,1920x1080

    info = read_epic_video_info(path)

    assert len(info) == len(path.read_text().splitlines()) - 1 == 700
    assert info[first[0]].fps == pytest.approx(float(first[2]))
    assert info[first[0]].duration == pytest.approx(float(first[1]))
    assert info[first[0]].resolution == (1920, 1080)


# ---------------------------------------------------------------- manifests


def test_manifest_csv_and_jsonl_agree(tmp_path):
    csv_path = write(tmp_path / "m.csv", "path,start,end,labels,split\n"
                     "a/0001.mp4,0,10,dog;bark,train\n"
                     'a/0002.mp4,,,"[""speech""]",test\n'
                     "b/0003.mp4,2.5,,bark|speech,\n"
                     "b/0003.mp4,0,,speech,\n")
    jsonl_path = write(tmp_path / "m.jsonl", "\n".join(json.dumps(row) for row in [
        {"path": "a/0001.mp4", "start": 0, "end": 10, "labels": ["dog", "bark"], "split": "train"},
        {"path": "a/0002.mp4", "labels": "speech", "split": "test"},
        {"path": "b/0003.mp4", "start": 2.5, "labels": "bark|speech"},
        {"path": "b/0003.mp4", "start": 0, "labels": ["speech"]}]) + "\n\n")

    records, classes = read_manifest(csv_path)

    assert (records, classes) == read_manifest(jsonl_path)
    assert classes == ["bark", "dog", "speech"]
    assert [r.labels for r in records] == [(0, 1), (2,), (0, 2), (2,)]
    assert [(r.start, r.end) for r in records] == [(0, 10), (0, math.inf), (2.5, math.inf),
                                                   (0, math.inf)]
    assert [r.clip_id for r in records] == ["a/0001.mp4@0-10", "a/0002.mp4", "b/0003.mp4@2.5-inf",
                                            "b/0003.mp4@0-inf"]
    assert [r.split for r in records] == ["train", "test", None, None]


def test_manifest_with_given_classes_keeps_their_order_and_reports_unknowns(tmp_path):
    path = write(tmp_path / "test.csv", "path,labels\nx.mp4,speech\ny.mp4,meow\nz.mp4,\n")

    with pytest.raises(AnnotationError, match=r"test\.csv, line 3: unknown class.*meow"):
        read_manifest(path, classes=["speech", "dog"])
    records, classes = read_manifest(path, classes=["dog", "speech"], on_error="skip")
    report = records.report

    assert classes == ["dog", "speech"]
    assert [(r.video, r.labels) for r in records] == [("x.mp4", (1,)), ("z.mp4", ())]
    assert report.count == 1 and report.skipped[0][0] == 3


@pytest.mark.parametrize("name, text, problem", [
    ("m.csv", "file,labels\nx.mp4,a\n", "no `path` column"),
    ("m.csv", "path,labels\nx.mp4,a,b\n", "line 2: expected 2 columns"),
    ("m.csv", "path,start,labels\nx.mp4,soon,a\n", "line 2: start 'soon' is not a number"),
    ("m.jsonl", '{"path": "x.mp4"}\n{"path": \n', "line 2: invalid JSON"),
    ("m.jsonl", '{"path": "x.mp4", "labels": [1, 2]}\n', "line 1: labels [1, 2] must be names"),
])
def test_manifest_bad_rows_name_file_and_line(tmp_path, name, text, problem):
    path = write(tmp_path / name, text)

    with pytest.raises(AnnotationError, match=name.replace(".", r"\.")) as error:
        read_manifest(path)
    assert problem in str(error.value)


def epic_heads():
    return {"verb": read_epic_classes(epic_file("EPIC_100_verb_classes.csv")),
            "noun": read_epic_classes(epic_file("EPIC_100_noun_classes.csv"))}


def test_epic_records_round_trip_through_a_manifest(tmp_path):
    # read_epic -> write_manifest -> read_manifest gives the same clips, spans and verb/noun ids, and the
    # manifest holds the class keys of the ids in the real file's verb_class / noun_class columns.
    records = read_epic_head(split="validation")
    heads = epic_heads()
    path = write_manifest(tmp_path / "manifest.csv", records, heads, "{participant}/videos/{video}.MP4")
    lines = path.read_text().splitlines()
    assert lines[0] == "clip_id,path,start,end,verb,noun,split"
    assert lines[2] == "P01_11_1,P01/videos/P01_11.MP4,1.56,2.45,put,plate,validation"  # verb_class 1, noun_class 2

    back, classes = read_manifest(path, heads)

    assert classes == heads
    assert [(r.clip_id, r.start, r.end, r.labels, r.split) for r in back] == [
        (r.clip_id, r.start, r.end, r.labels, r.split) for r in records]
    assert all(isinstance(r.labels, HeadLabels) and r.video == f"P01/videos/{r.clip_id.rsplit('_', 1)[0]}.MP4"
               for r in back)


def test_manifest_writes_single_and_multi_label_records_that_read_back(tmp_path):
    records = [ClipRecord("a", 0.0, 10.0, (0, 2), video="x.mp4", split="train"),
               ClipRecord("b", 2.5, math.inf, (), video="y;z.mp4")]
    back, classes = read_manifest(write_manifest(tmp_path / "m.csv", records, ["dog", "bark;x", "speech"]),
                                  ["dog", "bark;x", "speech"])
    assert classes == ["dog", "bark;x", "speech"]
    assert [(r.clip_id, r.video, r.start, r.end, r.labels, r.split) for r in back] == [
        ("a", "x.mp4", 0.0, 10.0, (0, 2), "train"), ("b", "y;z.mp4", 2.5, math.inf, (), None)]


@pytest.mark.parametrize("row, problem", [
    ("x.mp4,take,", "line 2: gives verb but not noun (every head or none)"),
    ("x.mp4,take,spaceship", "line 2: unknown noun 'spaceship' (not among the 300 noun classes)"),
])
def test_multi_head_manifest_rows_give_every_head_known_names(tmp_path, row, problem):
    path = write(tmp_path / "m.csv", f"path,verb,noun\n{row}\ny.mp4,,\n")
    with pytest.raises(AnnotationError, match=r"m\.csv") as error:
        read_manifest(path, epic_heads())
    assert problem in str(error.value)
    records, _ = read_manifest(path, epic_heads(), on_error="skip")
    assert [(r.video, dict(r.labels)) for r in records] == [("y.mp4", {})]  # an unlabelled clip


# ---------------------------------------------------------------- locate


def test_locate_sets_paths_and_reports_all_missing_files_once(tmp_path):
    records = read_vggsound(shared_path("real_annotations", "vggsound", "test_head300.csv"))
    present = records[::3]
    for record in present:
        (tmp_path / "clips" / f"{record.clip_id}.mp4").parent.mkdir(exist_ok=True)
        (tmp_path / "clips" / f"{record.clip_id}.mp4").write_bytes(b"")

    found, report = locate(records, tmp_path, "clips/{ytid}_{start:06d}.mp4")

    assert [r.clip_id for r in found] == [r.clip_id for r in present]
    assert all(r.path == str(tmp_path / "clips" / f"{r.clip_id}.mp4") for r in found)
    assert report.count == 200 and report.total == 300
    assert {r.clip_id for r in report.missing} == {r.clip_id for r in records} - {
        r.clip_id for r in present}
    assert "200 of 300" in str(report)


def test_locate_epic_layout(tmp_path):
    records = read_epic_head()
    (tmp_path / "P01" / "videos").mkdir(parents=True)
    (tmp_path / "P01" / "videos" / "P01_11.MP4").write_bytes(b"")

    found, report = locate(records, tmp_path, "{participant}/videos/{video_id}.MP4")

    assert {r.video for r in found} == {"P01_11"}
    assert {r.video for r in report.missing} == {r.video for r in records} - {"P01_11"}


@pytest.mark.parametrize("pattern", ["../{ytid}.mp4", "clips/../../{ytid}.mp4", "/elsewhere/{ytid}"])
def test_locate_rejects_paths_outside_the_root(tmp_path, pattern):
    records = [ClipRecord("a_000000", 0.0, 10.0, 0, video="a"), ClipRecord("b_000000", 0.0, 10.0, 0,
                                                                             video="b")]

    with pytest.raises(ValueError, match=r"2 clip path\(s\).*escape.*a_000000: .*b_000000"):
        locate(records, tmp_path / "root", pattern)


def test_locate_allows_dot_dot_that_stays_inside_and_names_unknown_fields(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.mp4").write_bytes(b"")
    record = ClipRecord("a", 0.0, 10.0, 0, video="a")

    found, _ = locate([record], tmp_path, "x/../b/{video}.mp4")
    with pytest.raises(ValueError, match="unknown field 'label'"):
        locate([record], tmp_path, "{label}.mp4")

    assert found[0].path == str(tmp_path / "b" / "a.mp4")


def test_manifest_records_locate_by_their_path(tmp_path):
    path = write(tmp_path / "m.csv", "path,labels\nclips/x.mp4,a\nclips/../../y.mp4,b\n")
    records, _ = read_manifest(path)

    with pytest.raises(ValueError, match=r"1 clip path\(s\).*y\.mp4"):
        locate(records, tmp_path, "{video}")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "x.mp4").write_bytes(b"")
    found, report = locate(records[:1], tmp_path, "{video}")
    assert len(found) == 1 and report.count == 0


# ---------------------------------------------------------------- availability


def test_head_labels_behave_like_a_frozen_dict():
    labels = HeadLabels({"verb": 3, "noun": 7})

    assert labels == {"verb": 3, "noun": 7} and labels["noun"] == 7 and list(labels) == ["verb", "noun"]
    assert hash(labels) == hash(HeadLabels([("noun", 7), ("verb", 3)]))
    with pytest.raises(KeyError):
        labels["action"]


@pytest.mark.skipif(not (shutil.which("sort") and shutil.which("sha256sum")), reason="no coreutils")
def test_availability_record_matches_sort_and_sha256sum():
    ids = [r.clip_id for r in read_audioset(*audioset_files())]
    text = "".join(f"{i}\n" for i in reversed(ids + ids[:5]))
    digest = subprocess.run("LC_ALL=C sort -u | sha256sum", shell=True, input=text.encode(),
                            capture_output=True, check=True).stdout.split()[0].decode()

    record = availability_record(ids + ids[:5], date="2024-01-31")

    assert record == {"date": "2024-01-31", "count": 300, "sha256": digest}
    assert availability_record(reversed(ids))["sha256"] == digest
    assert availability_record(ids[1:])["sha256"] != digest


def test_readers_return_the_same_type_whatever_on_error(tmp_path):
    path = write(tmp_path / "m.csv", "path,labels\nx.mp4,speech\n")
    raised, _ = read_manifest(path)
    skipped, _ = read_manifest(path, on_error="skip")
    assert type(raised) is type(skipped) and raised == skipped and raised.report.count == skipped.report.count == 0
    segments = read_audioset(*audioset_files())
    assert type(segments) is type(read_audioset(*audioset_files(), on_error="skip")) and segments.report.count == 0
