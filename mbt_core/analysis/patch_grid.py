"""Pictures of tokenisation (Sec. 3.1, Eq. 1): a clip's frames and spectrogram with the model's patch grid.

Frames are drawn in a row, each tubelet's frames sharing a tinted band, so a viewer sees which frames
one RGB token spans; the spectrogram is drawn with time across and low mel bins at the bottom.
"""
from __future__ import annotations

import numpy as np

from mbt_core.data.tokenise import View
from mbt_core.media.images import enlarge


def frames_strip(view: View, scale: int = 4, gap: int = 4) -> np.ndarray:
    """All sampled frames side by side with their patch grid; tubelet groups tinted alternately."""
    tubelet = view.rgb_patch[0]
    tiles = []
    for index in range(len(view.frames)):
        tile = enlarge(view.draw_patches("rgb", index), scale)
        band = np.zeros((6, tile.shape[1], 3), np.uint8)
        band[:] = (255, 160, 0) if (index // tubelet) % 2 == 0 else (0, 160, 255)
        tiles.append(np.concatenate([band, tile]))
        tiles.append(np.full((tiles[-1].shape[0], gap, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def spectrogram_grid(view: View, scale: int = 2) -> np.ndarray:
    """The log-mel spectrogram with its patch grid, enlarged."""
    return enlarge(view.draw_patches("spec"), scale)


def token_counts(view: View) -> dict[str, int]:
    """Tokens the model sees for this view: RGB and spectrogram patches."""
    return {"rgb": int(np.prod(view.rgb_grid)), "spec": int(np.prod(view.spec_grid))}
