"""Training augmentations (Sec. 4.2): frame crop/flip/colour, SpecAugment, mixup and modality mixup (Sec. 4.3).

Per-example transforms act on one clip, with the same random draw for all its frames, and take an
explicit `np.random.Generator`; `augment_example` is the one training path, configured by the run's
`train` section; `mixup` is a batch transform on a dict batch {"rgb", "spec", "labels"}.
Defaults follow the official MBT AudioSet config where the paper is silent.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import cv2
import numpy as np

# SpecAugment of the official MBT config (lingvo): four time masks of up to 48 frames, one frequency mask
# of up to 48 bins. The default of `spec_augment` is the paper's AST-style one.
OFFICIAL_SPEC_AUGMENT = dict(time_masks=4, max_time=48, freq_masks=1, max_freq=48)
if TYPE_CHECKING:
    from mbt_core.recipes import TrainConfig

_GREY = np.array([0.2989, 0.5870, 0.1140], np.float32)  # ITU-R 601 luma, as tf.image.rgb_to_grayscale


def random_crop(frames: np.ndarray, size: int, rng: np.random.Generator,
                scale: tuple[float, float] = (0.9, 1.33)) -> np.ndarray:
    """Scale jitter then a random size x size crop of (F, H, W, C) frames, the same for every frame.

    As the official pipeline: height and width are scaled by independent factors in `scale`, then
    cropped; done here as the equivalent crop of size/factor pixels resized to `size`, which is cheaper.
    """
    h, w = frames.shape[1:3]
    fh, fw = rng.uniform(*scale, size=2)
    ch, cw = min(h, max(1, round(size / fh))), min(w, max(1, round(size / fw)))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = frames[:, top:top + ch, left:left + cw]
    if (ch, cw) == (size, size):
        return np.ascontiguousarray(crop)
    mode = cv2.INTER_AREA if ch > size and cw > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=mode).reshape(size, size, -1) for f in crop])


def random_flip(frames: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror (F, H, W, C) frames left-right with probability p."""
    return frames[:, :, ::-1] if rng.random() < p else frames


def color_jitter(frames: np.ndarray, rng: np.random.Generator, p: float = 0.8, drop: float = 0.1,
                 brightness: float = 32 / 255, saturation: tuple[float, float] = (0.6, 1.4),
                 contrast: tuple[float, float] = (0.6, 1.4), hue: float = 0.2) -> np.ndarray:
    """Colour jitter of uint8 RGB frames (F, H, W, 3), one draw per clip (the official video colour augmentation).

    With probability p: brightness + U(-b, b), saturation x U(s), contrast x U(c) about each frame's
    channel means, hue + U(-h, h) turns; then, with probability `drop`, greyscale. Returns float32 in [0, 1].
    Drawn in that order from `rng`: the jitter's coin, b, s, c, h, then the greyscale coin.
    """
    f, h, w, c = frames.shape
    jitter = rng.random() < p
    offset = rng.uniform(-brightness, brightness) if jitter else 0.0
    # One float32 table lookup: uint8 -> [0, 1] with the brightness offset, clipped as HSV needs.
    table = np.clip(np.arange(256, dtype=np.float32) / 255 + np.float32(offset), 0.0, 1.0)
    x = cv2.LUT(np.ascontiguousarray(frames, np.uint8).reshape(f * h, w, c), table)
    if jitter:
        x = _hsv(x, saturation=rng.uniform(*saturation)).reshape(f, h, w, c)
        scale = rng.uniform(*contrast)
        for frame in x:  # (x - mean) * scale + mean, one affine map per frame
            mean = np.asarray(cv2.mean(frame)[:3])
            frame[:] = cv2.transform(frame, np.hstack([np.eye(3) * scale, (1 - scale) * mean[:, None]]))
        x = _hsv(np.clip(x.reshape(f * h, w, c), 0.0, 1.0), hue=rng.uniform(-hue, hue))
        np.clip(x, 0.0, 1.0, out=x)
    if rng.random() < drop:
        x = cv2.transform(x, np.tile(_GREY, (3, 1)))
    return x.reshape(f, h, w, c)


def _hsv(x: np.ndarray, saturation: float = 1.0, hue: float = 0.0) -> np.ndarray:
    """Scale saturation and turn hue (in turns) of float RGB pixels (N, W, 3) in [0, 1] through HSV (H in degrees).

    OpenCV's HSV -> RGB wraps hues in [360, 720) but not negative ones, so a turn is added as 360 (hue mod 1).
    """
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
    hsv = cv2.min(cv2.multiply(hsv, (1.0, saturation, 1.0)), (720.0, 1.0, 1.0))
    return cv2.cvtColor(cv2.add(hsv, (360.0 * (hue % 1.0), 0.0, 0.0)), cv2.COLOR_HSV2RGB)


def spec_augment(spec: np.ndarray, rng: np.random.Generator, *, time_masks: int = 1, max_time: int = 192,
                 freq_masks: int = 1, max_freq: int = 48, value: float = 0.0) -> np.ndarray:
    """SpecAugment masks (Sec. 4.2): time and frequency bands of a (time, mel[, C]) spectrogram set to `value`.

    Defaults: the paper's AST style, one time mask of up to 192 frames and one frequency mask of up to 48
    bins; `**OFFICIAL_SPEC_AUGMENT` gives the official config's four time masks of up to 48 frames. Each
    mask's width is uniform in [0, max] (capped at the axis length), its position uniform where it fits.
    """
    out = np.array(spec, copy=True)
    for axis, count, widest in ((0, time_masks, max_time), (1, freq_masks, max_freq)):
        length = out.shape[axis]
        for _ in range(count):
            width = int(rng.integers(0, min(widest, length) + 1))
            first = int(rng.integers(0, length - width + 1))
            index = [slice(None)] * out.ndim
            index[axis] = slice(first, first + width)
            out[tuple(index)] = value
    return out


def mixup(batch: Mapping[str, np.ndarray], rng: np.random.Generator, alpha: float = 0.3, *,
          modality_mixup: bool = False, partner: str = "reverse", modalities: Sequence[str] | None = None,
          weights: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Mixup [59] or modality mixup (Sec. 4.3) of a dict batch {modality: (B, ...), "labels": (B, K)}.

    Every modality m is mixed with the same partner permutation p: x_m <- l_m x_m + (1 - l_m) x_m[p],
    where l_m ~ Beta(alpha, alpha) is drawn once for all modalities (mixup) or once per modality
    (modality mixup); `weights` fixes the l_m instead. p is the reversed batch (as the official code) or,
    with partner="random", a random permutation. Returns a new dict: the mixed modalities,
    "labels_<m>" = l_m y + (1 - l_m) y[p], "mixup_<m>" = l_m, "mixup_partner" = p, and "labels" = the mean
    of the labels_<m> (the mixed labels themselves when the weight is shared). Other keys pass through.
    """
    labels = np.asarray(batch["labels"])
    size = len(labels)
    if modalities is None:
        modalities = [k for k in batch if k != "labels"]
    if partner == "reverse":
        perm = np.arange(size)[::-1].copy()
    elif partner == "random":
        perm = rng.permutation(size)
    else:
        raise ValueError(f"partner must be 'reverse' or 'random', got {partner!r}")
    if weights is None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        shared = rng.beta(alpha, alpha)
        weights = {m: (rng.beta(alpha, alpha) if modality_mixup else shared) for m in modalities}
    out = dict(batch)
    for m in modalities:
        lam = np.float32(weights[m])
        x = np.asarray(batch[m])
        if len(x) != size:
            raise ValueError(f"batch[{m!r}] has {len(x)} examples but labels have {size}")
        out[m] = (lam * x + (1 - lam) * x[perm]).astype(x.dtype)
        out[f"labels_{m}"] = (lam * labels + (1 - lam) * labels[perm]).astype(np.float32)
        out[f"mixup_{m}"] = lam
    out["labels"] = np.mean([out[f"labels_{m}"] for m in modalities], axis=0).astype(np.float32)
    out["mixup_partner"] = perm
    return out


def augment_example(example: Mapping[str, np.ndarray], rng: np.random.Generator, train: "TrainConfig",
                    image_size: int, standardised: bool) -> dict[str, np.ndarray]:
    """The training augmentation of one example (Sec. 4.2), as `train` configures it.

    Frames arrive as the stored uint8 square (F, s, s, 3) and leave as float32 (F, S, S, 3) in [-1, 1]:
    scale-jittered random crop, flip, colour jitter. The spectrogram gets SpecAugment; its masks hold the
    mean, which is 0 for a `standardised` spectrogram and the example's own mean otherwise.
    """
    out = dict(example)
    if train.frame_augment and "rgb" in out:
        frames = random_flip(random_crop(out["rgb"], image_size, rng, train.crop_scale), rng, train.flip)
        out["rgb"] = color_jitter(frames, rng, train.color_jitter, train.color_drop) * 2.0 - 1.0
    if train.spec_augment and "spec" in out:
        spec = out["spec"]
        out["spec"] = spec_augment(spec, rng, time_masks=train.spec_time_masks, max_time=train.spec_max_time,
                                   freq_masks=train.spec_freq_masks, max_freq=train.spec_max_freq,
                                   value=0.0 if standardised else float(np.mean(spec)))
    return out
