"""What a synthetic clip shows and sounds like: a scene of latent values, drawn as frames and samples.

A scene is a flat dict (one row of `attributes.csv`): the binary attributes that labels are made of,
plus every nuisance value (positions, motion, colours, loudness, event times, noise seed), so that
`render_frames` and `render_audio` are pure functions of it. The choices serve the suite's `tiny-48`
view (16 frames of 48x48 cropped from a 55-pixel short side, in 4-frame tubelets: one token column per
second; 400 x 32 log-mel up to 8 kHz): tones sit on far-apart mel bins, colours keep their hue after
resizing, shapes span about a third of the frame and stay inside the centre crop, and beeps and pulses
last long enough to fill several tokens of each modality.
"""
from __future__ import annotations

import colorsys
import math
from typing import Any, Mapping

import numpy as np

FPS = 25
SAMPLE_RATE = 16000
# Pure tones on 40 Hz FFT-bin centres (400-point FFT at 16 kHz) that land in mel bins 2, 6, 12 and 23
# of 32 (0-8 kHz): a hum is one bright, isolated row of the spectrogram.
LOW_HUM_HZ = 280.0
DISTRACTOR_HUM_HZ = 640.0
HIGH_HUM_HZ = 1200.0
BEEP_HZ = 3440.0
# Events fall in one half of the clip or the other (two slots): the beep in one, the circle's pulse in
# the same half when it is the sound source, else in the other; the square's pulse in either. Both last
# three quarters of their half (3 s of a 4 s clip: six sampled frames, nine spectrogram patches), so the
# coincidence is a dense signal: short events (0.2-0.5 s beeps and pulses in 0.4-2 s slots, the first
# designs) were learnt by no variant in a CPU run.
SLOTS = 2
EVENT_FRACTION = 0.75  # of a slot: how long a beep or a pulse lasts
START_FRACTION = 0.2  # of a slot: how late in it an event may start (it ends before the slot does)
MIN_SLOT_SECONDS = 0.6
PULSE_SCALE = 1.2  # a pulsing shape grows by this factor and turns 35 % towards white
PULSE_WHITEN = 0.35
# Hue ranges in degrees: warm = red to yellow, cool = cyan to blue; `difficulty` widens both by up to
# 10 degrees each side, which still leaves them 100 degrees apart on either side of the hue circle.
WARM_HUES = (-10.0, 45.0)
COOL_HUES = (185.0, 230.0)
HUE_WIDENING = 10.0
# Layout, as fractions of the frame side: the circle on one side, the square on the other.
SIDE_X = (0.3, 0.7)
CIRCLE_RADIUS = (0.15, 0.17)
SQUARE_HALF = (0.13, 0.15)
DOT_RADIUS = 0.05
MAX_DRIFT = (0.015, 0.08)  # (x, y) amplitude of the slow sinusoidal drift


def slot_seconds(clip_seconds: float) -> float:
    """The length of one event slot (half the clip)."""
    half = clip_seconds / SLOTS
    if half < MIN_SLOT_SECONDS:
        raise ValueError(f"clip_seconds {clip_seconds} is too short: events need >= {SLOTS * MIN_SLOT_SECONDS} s")
    return half


def event_seconds(clip_seconds: float) -> float:
    """How long a beep or a pulse lasts in a clip of this length."""
    return EVENT_FRACTION * slot_seconds(clip_seconds)


def _event_time(rng: np.random.Generator, slot: int, half: float) -> str:
    """The start time (s, ms precision) of one event early in its slot, as text (the `;`-list format)."""
    return f"{round(float((slot + rng.uniform(0.0, START_FRACTION)) * half), 3):.3f}"


def _motion(rng: np.random.Generator, prefix: str, x: float) -> dict[str, float]:
    """A slow sinusoidal drift around (x, y0), fractions of the frame side."""
    return {f"{prefix}_x": x, f"{prefix}_y": round(rng.uniform(0.42, 0.58), 4),
            f"{prefix}_drift_x": round(rng.uniform(0.0, MAX_DRIFT[0]), 4),
            f"{prefix}_drift_y": round(rng.uniform(0.0, MAX_DRIFT[1]), 4),
            f"{prefix}_drift_hz": round(rng.uniform(0.15, 0.5), 4),
            f"{prefix}_drift_phase": round(rng.uniform(0.0, 2 * math.pi), 4)}


def sample_scene(attributes: Mapping[str, bool], rng: np.random.Generator, clip_seconds: float,
                 difficulty: float) -> dict[str, Any]:
    """Every latent value of one clip, given its binary attributes; difficulty in [0, 1] adds nuisance."""
    widen = HUE_WIDENING * difficulty
    lo, hi = WARM_HUES if attributes["circle_warm"] else COOL_HUES
    circle_left = bool(rng.integers(2))
    # The beep in a random half; the circle pulses with it when it is the sound source, else at a time drawn
    # alike in the other half (drawn either way, so the label changes no other value); with probability
    # `difficulty` the square pulses too, in either half (a distractor that asks which shape pulsed). The
    # circle's pulse times have one distribution whatever the label.
    half, beep_slot = slot_seconds(clip_seconds), int(rng.integers(SLOTS))
    beeps, other = _event_time(rng, beep_slot, half), _event_time(rng, 1 - beep_slot, half)
    square = _event_time(rng, int(rng.integers(SLOTS)), half) if rng.random() < difficulty else ""
    scene = {name: bool(value) for name, value in attributes.items()}
    scene.update(
        circle_hue=round(rng.uniform(lo - widen, hi + widen) % 360.0, 2),
        circle_saturation=round(rng.uniform(0.8, 1.0), 3), circle_value=round(rng.uniform(0.8, 1.0), 3),
        circle_left=circle_left, circle_radius=round(rng.uniform(*CIRCLE_RADIUS), 4),
        **_motion(rng, "circle", SIDE_X[0] if circle_left else SIDE_X[1]),
        square_half=round(rng.uniform(*SQUARE_HALF), 4),
        # Grey, or (with probability `difficulty`) any saturated hue, warm ones included.
        square_hue=round(rng.uniform(0.0, 360.0), 2),
        square_saturation=round(rng.uniform(0.6, 0.9), 3) if rng.random() < difficulty else 0.0,
        square_value=round(rng.uniform(0.65, 0.9), 3),
        **_motion(rng, "square", SIDE_X[1] if circle_left else SIDE_X[0]),
        background=round(rng.uniform(15.0, 60.0), 1), pixel_noise=round(2.0 + 20.0 * difficulty, 2),
        distractor_dot=bool(rng.random() < difficulty), dot_hue=round(rng.uniform(0.0, 360.0), 2),
        dot_x=round(rng.uniform(0.1, 0.9), 4), dot_y=round(rng.uniform(0.1, 0.9), 4),
        dot_speed=round(rng.uniform(0.05, 0.2), 4), dot_angle=round(rng.uniform(0.0, 2 * math.pi), 4),
        beep_times=beeps, circle_pulse_times=beeps if attributes["circle_is_sound_source"] else other,
        square_pulse_times=square,
        low_hum_gain=round(rng.uniform(0.12 - 0.06 * difficulty, 0.16), 4),
        high_hum_gain=round(rng.uniform(0.12 - 0.06 * difficulty, 0.16), 4),
        beep_gain=round(rng.uniform(0.12, 0.2), 4), tremolo_hz=round(rng.uniform(0.2, 1.0), 4),
        distractor_hum=bool(rng.random() < difficulty), distractor_gain=round(rng.uniform(0.06, 0.12), 4),
        audio_noise=round(0.004 + 0.04 * difficulty, 4),
        noise_seed=int(rng.integers(2**31)),
    )
    return scene


def event_starts(times: str) -> np.ndarray:
    """The start times of a `;`-separated event list."""
    return np.array([float(t) for t in times.split(";") if t], np.float64)


def _active(t: np.ndarray, times: str, seconds: float) -> np.ndarray:
    """1.0 where some event of `times` lasting `seconds` is on, else 0.0."""
    starts = event_starts(times)
    return ((t[:, None] >= starts) & (t[:, None] < starts + seconds)).any(axis=1).astype(np.float32)


def _centre(scene: Mapping[str, Any], prefix: str, t: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of a shape's centre at times t."""
    phase = 2 * math.pi * scene[f"{prefix}_drift_hz"] * t + scene[f"{prefix}_drift_phase"]
    x = scene[f"{prefix}_x"] + scene[f"{prefix}_drift_x"] * np.sin(phase)
    y = scene[f"{prefix}_y"] + scene[f"{prefix}_drift_y"] * np.cos(phase)
    return (x * size).astype(np.float32), (y * size).astype(np.float32)


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """An HSV colour (hue in degrees) as RGB in [0, 255]."""
    return 255.0 * np.array(colorsys.hsv_to_rgb((hue % 360.0) / 360.0, saturation, value), np.float32)


def render_frames(scene: Mapping[str, Any], size: int, clip_seconds: float) -> np.ndarray:
    """The clip's frames at 25 fps: uint8 RGB (T, size, size, 3)."""
    t = (np.arange(int(round(clip_seconds * FPS))) / FPS).astype(np.float32)  # float32 throughout: 2x faster
    pixel = np.arange(size, dtype=np.float32) + 0.5
    image = np.full((len(t), size, size, 3), scene["background"], np.float32)

    def paint(x: np.ndarray, y: np.ndarray, extent: np.ndarray, colour: np.ndarray, square: bool = False) -> None:
        # Coverage with a one-pixel ramp (anti-aliased edge), computed only in the box the shape visits.
        reach = float(extent.max()) + 1.0
        x0, x1 = max(0, int(x.min() - reach)), min(size, int(x.max() + reach) + 1)
        y0, y1 = max(0, int(y.min() - reach)), min(size, int(y.max() + reach) + 1)
        dx, dy = pixel[None, None, x0:x1] - x[:, None, None], pixel[None, y0:y1, None] - y[:, None, None]
        distance = np.maximum(abs(dx), abs(dy)) if square else np.hypot(dx, dy)
        alpha = np.clip(extent.astype(np.float32)[:, None, None] - distance + 0.5, 0.0, 1.0)[..., None]
        region = image[:, y0:y1, x0:x1]
        region += alpha * (colour.astype(np.float32)[:, None, None, :] - region)

    def pulsed(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        on = _active(t, scene[f"{prefix}_pulse_times"], event_seconds(clip_seconds))
        base = _rgb(scene[f"{prefix}_hue"], scene[f"{prefix}_saturation"], scene[f"{prefix}_value"])
        colour = base + (255.0 - base) * (PULSE_WHITEN * on)[:, None]
        return 1.0 + (PULSE_SCALE - 1.0) * on, colour

    if scene["square_present"]:
        scale, colour = pulsed("square")
        paint(*_centre(scene, "square", t, size), scene["square_half"] * size * scale, colour, square=True)
    scale, colour = pulsed("circle")
    paint(*_centre(scene, "circle", t, size), scene["circle_radius"] * size * scale, colour)
    if scene["distractor_dot"]:  # a small dot gliding across the frame (wrapping round), on top
        x = (scene["dot_x"] + scene["dot_speed"] * math.cos(scene["dot_angle"]) * t) % 1.0 * size
        y = (scene["dot_y"] + scene["dot_speed"] * math.sin(scene["dot_angle"]) * t) % 1.0 * size
        paint(x, y, np.full(len(t), DOT_RADIUS * size), np.tile(_rgb(scene["dot_hue"], 0.9, 0.9), (len(t), 1)))
    # Fixed-pattern (per clip, not per frame) grain: per-frame noise would cost the encoder 5x the time and bytes.
    noise = np.random.default_rng(scene["noise_seed"]).standard_normal((size, size, 1), np.float32)
    image += np.float32(scene["pixel_noise"]) * noise + np.float32(0.5)
    return np.clip(image, 0, 255).astype(np.uint8)


def _ramped(t: np.ndarray, times: str, seconds: float, ramp: float = 0.01) -> np.ndarray:
    """Gate of events of `times` lasting `seconds`, with linear on/off ramps (no clicks)."""
    gate = np.zeros_like(t)
    for start in event_starts(times):
        gate = np.maximum(gate, np.clip(np.minimum(t - start, start + seconds - t) / ramp, 0.0, 1.0))
    return gate


def render_audio(scene: Mapping[str, Any], clip_seconds: float) -> np.ndarray:
    """The clip's mono soundtrack at 16 kHz: float32 (samples,) in [-1, 1]."""
    t = np.arange(int(round(clip_seconds * SAMPLE_RATE))) / SAMPLE_RATE
    fade = np.clip(np.minimum(t, clip_seconds - t) / 0.02, 0.0, 1.0)  # no click at either end
    tremolo = 1.0 + 0.2 * np.sin(2 * math.pi * scene["tremolo_hz"] * t)
    hums = [(scene["low_hum"], LOW_HUM_HZ, scene["low_hum_gain"]),
            (scene["high_hum"], HIGH_HUM_HZ, scene["high_hum_gain"]),
            (scene["distractor_hum"], DISTRACTOR_HUM_HZ, scene["distractor_gain"])]
    y = sum(gain * np.sin(2 * math.pi * hz * t) for on, hz, gain in hums if on) * tremolo * fade
    beep = _ramped(t, scene["beep_times"], event_seconds(clip_seconds)) * np.sin(2 * math.pi * BEEP_HZ * t)
    y = y + scene["beep_gain"] * beep
    y = y + np.random.default_rng(scene["noise_seed"] + 1).normal(0.0, scene["audio_noise"], len(t))
    return np.clip(y, -1.0, 1.0).astype(np.float32)
