"""Data cards agree with the readers and the real class files; the card reader rejects bad cards."""
import pytest

from mbt_core.datasets import card_path, read_audioset, read_card, read_epic, read_vggsound
from mbt_core.datasets.audioset import read_audioset_classes
from mbt_core.datasets.cards import SECTIONS
from mbt_core.datasets.epic import read_epic_classes
from mbt_core.datasets.records import HeadLabels
from mbt_core.datasets.vggsound import vggsound_classes
from shared import shared_path

CARDS = ("audioset", "vggsound", "epic_kitchens_100")
KEYS = ("name", "classes", "label_type", "metric", "clip_seconds", "fps", "spectrogram", "splits",
        "licence", "source", "citation", "availability")


def real(*parts):
    return shared_path("real_annotations", *parts)


@pytest.mark.parametrize("name", CARDS)
def test_card_has_every_key_and_section(name):
    card = read_card(name)

    assert card["name"] == name and card_path(name).stem == name
    assert [key for key in KEYS if key not in card] == []
    assert [s for s in SECTIONS if len(card["sections"].get(s, "")) < 100] == []
    assert set(card["spectrogram"]) == {"mean", "std"}
    assert all(set(entry) >= {"date", "count", "sha256"} for entry in card["availability"])


def test_audioset_card_classes_are_the_class_file_display_names_in_index_order():
    classes_csv = real("audioset", "class_labels_indices.csv")
    card = read_card("audioset")
    records = read_audioset(real("audioset", "balanced_train_segments_head300.csv"), classes_csv)

    assert card["classes"] == [name for _, name in read_audioset_classes(classes_csv)]
    assert len(card["classes"]) == 527 and card["classes"][0] == "Speech"
    assert card["label_type"] == "multi_label"
    assert all(isinstance(r.labels, tuple) and max(r.labels) < 527 for r in records)


def test_vggsound_card_classes_are_the_sorted_stat_names_and_drive_the_reader():
    card = read_card("vggsound")
    head = real("vggsound", "test_head300.csv")
    labels = [line.split(",", 1)[1].strip('"') for line in head.read_text().splitlines()]

    records = read_vggsound(head)  # classes=None: the card's list

    assert card["classes"] == vggsound_classes(real("vggsound", "stat.csv"))
    assert len(card["classes"]) == 309 and card["classes"] == sorted(card["classes"])
    assert card["label_type"] == "single_label"
    assert [card["classes"][r.labels] for r in records] == labels


def test_epic_card_heads_are_the_verb_and_noun_class_keys():
    card = read_card("epic")
    verbs = read_epic_classes(real("epic_kitchens_100", "EPIC_100_verb_classes.csv"))
    nouns = read_epic_classes(real("epic_kitchens_100", "EPIC_100_noun_classes.csv"))
    records = read_epic(real("epic_kitchens_100", "EPIC_100_validation_head300.csv"),
                        real("epic_kitchens_100", "EPIC_100_verb_classes.csv"),
                        real("epic_kitchens_100", "EPIC_100_noun_classes.csv"))

    assert card["classes"] == {"verb": verbs, "noun": nouns}
    assert (len(verbs), len(nouns)) == (97, 300) and (verbs[0], nouns[0]) == ("take", "tap")
    assert card["label_type"] == "multi_head"
    assert all(isinstance(r.labels, HeadLabels) and set(r.labels) == set(card["classes"])
               for r in records)


def test_a_minimal_card_such_as_the_synthetic_one_is_read(tmp_path):
    path = tmp_path / "synthetic.md"
    path.write_text("---\nname: synthetic\nlabel_type: single_label\nclasses: [beep, boop]\n"
                    "clip_seconds: 2.0\n---\n# Synthetic\n\n## Provenance\n\nGenerated.\n")

    card = read_card(path)

    assert (card["name"], card["classes"], card["clip_seconds"]) == ("synthetic", ["beep", "boop"], 2.0)
    assert card["sections"] == {"Provenance": "Generated."}


def test_card_found_by_name_in_the_cards_folder_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "toy_set.md").write_text("---\nname: toy_set\nlabel_type: multi_label\n"
                                         "classes: [a]\n---\n")
    monkeypatch.setenv("MBT_DATA_CARDS", str(tmp_path))

    assert read_card("Toy-Set")["name"] == "toy_set"
    with pytest.raises(FileNotFoundError, match="cards: toy_set"):
        read_card("audioset")


@pytest.mark.parametrize("text, problem", [
    ("# no front matter\n", "must start with `---`"),
    ("---\nname: x\nclasses: [a]\n---\n", "lacks label_type"),
    ("---\nname: x\nlabel_type: multi\nclasses: [a]\n---\n", "label_type 'multi'"),
    ("---\nname: x\nlabel_type: multi_head\nclasses: [a]\n---\n", "map head names"),
    ("---\nname: x\nlabel_type: single_label\nclasses: [a, b, a]\n---\n", "['a'] more than once"),
    ("---\nname: x\nlabel_type: single_label\nclasses: [a, [b]]\n---\n", "a list of names"),
    ("---\nname: [x\n---\n", "invalid YAML"),
])
def test_bad_card_names_file_and_problem(tmp_path, text, problem):
    path = tmp_path / "bad_card.md"
    path.write_text(text)

    with pytest.raises(ValueError, match="bad_card.md") as error:
        read_card(path)
    assert problem in str(error.value)
