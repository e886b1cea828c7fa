"""Spectrogram statistics: computed over the training split, recorded in the card, used to normalise."""
import numpy as np
import pytest

from mbt_core import MBTConfig
from mbt_core.cli import main
from mbt_core.data.pipeline import card_statistics, load_dataset, tokenised_split
from mbt_core.datasets import read_card
from mbt_core.datasets.synthetic import generate
from mbt_core.recipes import DataConfig


def _spectrograms(split):
    """Every clip's log-mel as the model reads it."""
    return np.stack([split.spectrogram(i) for i in range(len(split))])


def test_stats_recorded_in_card_and_used_to_normalise(tmp_path, capsys):
    generate(tmp_path, num_clips=12, seed=3, workers=1, progress=False)
    dataset = load_dataset(DataConfig(dir=str(tmp_path)))
    with pytest.raises(ValueError, match="mbt tokenise"):
        card_statistics(dataset)
    main(["tokenise", "--data", str(tmp_path), "--stats", "--splits", "train"])
    assert "spectrogram mean" in capsys.readouterr().out
    card = read_card(tmp_path / "data_card.md")
    config = MBTConfig.preset("tiny")
    raw = _spectrograms(tokenised_split(load_dataset(DataConfig(dir=str(tmp_path))), "train", config, 1,
                                        progress=False))
    assert card["spectrogram"]["mean"] == pytest.approx(float(np.mean(raw, dtype=np.float64)), abs=1e-5)
    assert card["spectrogram"]["std"] == pytest.approx(float(np.std(raw, dtype=np.float64)), rel=1e-5)
    assert card["spectrogram"]["clips"] == len(raw) and "## " in (tmp_path / "data_card.md").read_text()
    normalised = _spectrograms(tokenised_split(load_dataset(DataConfig(dir=str(tmp_path))), "train", config, 1,
                                               progress=False, normalise=True))
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(normalised.std()) == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(normalised, (raw - card["spectrogram"]["mean"]) / card["spectrogram"]["std"],
                               rtol=1e-4, atol=1e-4)
