"""Dataset annotation readers (AudioSet, VGGSound, EPIC-KITCHENS-100, manifests) and data cards."""
from mbt_core.datasets.audioset import read_audioset
from mbt_core.datasets.cards import availability_record, card_path, read_card
from mbt_core.datasets.epic import read_epic
from mbt_core.datasets.manifest import read_manifest, write_manifest
from mbt_core.datasets.records import ClipRecord, locate
from mbt_core.datasets.vggsound import read_vggsound

__all__ = ["ClipRecord", "availability_record", "card_path", "locate", "read_audioset",
           "read_card", "read_epic", "read_manifest", "read_vggsound", "write_manifest"]
