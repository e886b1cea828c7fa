"""Bad annotation files: bytes that are not UTF-8, repeated clips, a clip in two splits, no rows at all.

Each case is made from a real excerpt (../shared/real_annotations) or a file written here; the expected
line is where the test put the bad byte, and the real excerpts must still read without a warning.
"""
import shutil
import warnings

import pytest

from mbt_core import cli
from mbt_core.datasets import read_audioset, read_card, read_epic, read_manifest, read_vggsound
from mbt_core.datasets.audioset import read_audioset_classes
from mbt_core.datasets.epic import read_epic_classes, read_epic_video_info
from mbt_core.datasets.records import AnnotationError
from mbt_core.datasets.vggsound import vggsound_classes
from shared import REPO, shared_path


def real(*parts):
    return shared_path("real_annotations", *parts)


def with_latin1_byte(src, dst, line):
    """A copy of `src` with b"\\xe9" (Latin-1 "é", not UTF-8) put before the first comma of `line` (1-based)."""
    lines = src.read_bytes().splitlines(keepends=True)
    text = lines[line - 1]
    cut = text.index(b",") if b"," in text else len(text.rstrip())
    lines[line - 1] = text[:cut] + b"\xe9" + text[cut:]
    dst.write_bytes(b"".join(lines))
    return dst


AUDIOSET = ("audioset", "balanced_train_segments_head300.csv")
AUDIOSET_CLASSES = ("audioset", "class_labels_indices.csv")
EPIC = ("epic_kitchens_100", "EPIC_100_validation_head300.csv")
VERBS, NOUNS = ("epic_kitchens_100", "EPIC_100_verb_classes.csv"), ("epic_kitchens_100", "EPIC_100_noun_classes.csv")
VGGSOUND = ("vggsound", "test_head300.csv")
READERS = {  # file -> how to read it, given the (damaged) file
    AUDIOSET: lambda f: read_audioset(f, real(*AUDIOSET_CLASSES)),
    AUDIOSET_CLASSES: read_audioset_classes,
    EPIC: lambda f: read_epic(f, real(*VERBS), real(*NOUNS)),
    VERBS: read_epic_classes,
    ("epic_kitchens_100", "EPIC_100_video_info.csv"): read_epic_video_info,
    VGGSOUND: read_vggsound,
    ("vggsound", "stat.csv"): vggsound_classes,
}


@pytest.mark.parametrize("file", list(READERS), ids=lambda f: f[1])
def test_a_byte_that_is_not_utf8_names_file_and_line(tmp_path, file):
    bad = with_latin1_byte(real(*file), tmp_path / file[1], 7)
    with pytest.raises(AnnotationError, match=rf"{file[1]}, line 7: byte 0xe9 at column \d+ is not UTF-8"):
        READERS[file](bad)


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl"])
def test_a_manifest_or_card_that_is_not_utf8(tmp_path, name):
    text = ("path,labels\nx.mp4,dog\ny.mp4,caf\xe9\n" if name == "m.csv"
            else '{"path": "x.mp4"}\n{"path": "y.mp4", "labels": "caf\xe9"}\n')
    (tmp_path / name).write_bytes(text.encode("latin-1"))
    line, column = (3, 10) if name == "m.csv" else (2, 33)
    with pytest.raises(AnnotationError, match=rf"{name}, line {line}: byte 0xe9 at column {column} is not UTF-8"):
        read_manifest(tmp_path / name)
    card = tmp_path / "card.md"
    card.write_bytes("---\nname: x\nlabel_type: multi_label\nclasses: [caf\xe9]\n---\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"card\.md, line 4: byte 0xe9"):
        read_card(card)


def test_the_real_excerpts_read_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for file, read in READERS.items():
            assert len(read(real(*file))) > 0, file
        assert read_card("vggsound")["classes"]


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.csv"
    path.write_text("path,start,end,labels,split,clip_id\n" + "".join(f"{r}\n" for r in rows), encoding="utf-8")
    return path


def test_exact_repeats_in_a_split_are_dropped_with_their_count(tmp_path):
    path = _manifest(tmp_path, ["a.mp4,0,10,dog,train,", "b.mp4,0,10,cat,train,", "a.mp4,0,10,dog,train,",
                                "a.mp4,0,10,dog,train,", "c.mp4,,,cat,test,", "b.mp4,0,10,cat,train,"])
    with pytest.warns(UserWarning, match=r"manifest\.csv: dropped 3 duplicate row\(s\) of 2 clip\(s\): "
                                         r"'a\.mp4@0-10' x3, 'b\.mp4@0-10' x2"):
        records, _ = read_manifest(path)
    assert [r.clip_id for r in records] == ["a.mp4@0-10", "b.mp4@0-10", "c.mp4"]


@pytest.mark.parametrize("rows, problem", [
    (["a.mp4,0,10,dog,train,", "a.mp4,0,10,dog,test,"], r"'a\.mp4@0-10' in test and train"),
    # Two ids for one segment of one file are still one clip.
    (["a.mp4,0,10,dog,train,one", "a.mp4,0,10,dog,test,two"], r"'one = two \(one segment of a\.mp4\)' in test and train"),
])
def test_a_clip_in_two_splits_is_refused(tmp_path, rows, problem):
    with pytest.raises(AnnotationError, match=r"manifest\.csv: 1 clip\(s\) in more than one split .*" + problem):
        read_manifest(_manifest(tmp_path, rows))


def test_a_repeat_with_other_labels_is_refused(tmp_path):
    with pytest.raises(AnnotationError, match=r"clip 'a\.mp4' is listed twice in split 'train' with different"):
        read_manifest(_manifest(tmp_path, ["a.mp4,,,dog,train,", "a.mp4,,,cat,train,"]))


def test_vggsound_clip_in_train_and_test(tmp_path):
    path = tmp_path / "vggsound.csv"
    path.write_text("---g-f_I2yQ,1,people marching,test\n---g-f_I2yQ,1,people marching,train\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"'---g-f_I2yQ_000001' in test and train"):
        read_vggsound(path)


def test_files_without_rows_are_refused(tmp_path):
    header = _manifest(tmp_path, [])
    with pytest.raises(AnnotationError, match=r"manifest\.csv: no clips: the file has no annotation rows"):
        read_manifest(header)
    lines = real(*AUDIOSET).read_text(encoding="utf-8").splitlines()
    only_bad = tmp_path / "segments.csv"
    only_bad.write_text(lines[0] + "\nxyz, 0.0, 10.0, \"/m/nope\"\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"segments\.csv: no clips: .*\(1 bad row\(s\) skipped\)"):
        read_audioset(only_bad, real(*AUDIOSET_CLASSES), on_error="skip")


def test_mbt_tokenise_on_a_header_only_manifest_fails_naming_it(tmp_path, capsys):
    _manifest(tmp_path, [])
    shutil.copy(REPO / "data_cards" / "vggsound.md", tmp_path / "data_card.md")
    with pytest.raises(SystemExit) as done:
        cli.main(["tokenise", "--data", str(tmp_path)])
    [line] = capsys.readouterr().err.splitlines()
    assert done.value.code == 2 and line.startswith("mbt tokenise: ") and "manifest.csv" in line and "no clips" in line
