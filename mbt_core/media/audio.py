"""Audio of a video clip as a log-mel spectrogram (Sec. 4.2): 16 kHz mono, 25 ms Hamming window, 10 ms hop.

Decoding uses PyAV (no ffmpeg binary; librosa cannot read mp4). Decoded frames are placed by their
timestamps on the clip timeline of video.py, so codec padding (AAC priming samples) never shifts audio
against frames. The log-mel is pinned once, in `MEL`, and computed by librosa.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable

import av
import librosa
import numpy as np

from mbt_core.media.video import MissingAudioError, VideoDecodeError

SAMPLE_RATE = 16000
# The one log-mel of the project (AST-like, Sec. 4.2): `log(melspectrogram(y, **MEL, n_mels=mel_bins) + LOG_EPS)`.
MEL = dict(sr=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, window="hamming",
           fmin=0.0, fmax=8000.0, power=2.0)
LOG_EPS = 1e-6
SILENCE = math.log(LOG_EPS)  # log-mel of digital silence: the value of padded spectrogram frames
_MARGIN_S = 0.05  # decoded beyond the window on each side, so resampling has context at its edges
_SEEK_AFTER_S = 1.0


@dataclasses.dataclass(frozen=True)
class Waveform:
    """Mono audio of [start, start + len/rate) on the clip timeline; `valid` marks samples backed by data."""

    samples: np.ndarray  # float32 (n,)
    valid: np.ndarray  # bool (n,): False where the audio was padded with zeros
    start: float
    rate: int = SAMPLE_RATE


# FFmpeg's default downmix (ITU-R BS.775: centre and surround channels at -3 dB, LFE dropped), scaled so
# that the weights sum to 1: stereo becomes the mean of its channels, and no mix exceeds full scale.
DOWNMIX = {"rematrix_maxval": "1.0"}


def _mono(frame: av.AudioFrame, resamplers: dict | None = None) -> np.ndarray:
    """One decoded frame as float32 mono in [-1, 1]: any sample format and channel layout, downmixed (DOWNMIX)."""
    # libswresample reads the frame in C: numpy never touches a planar frame of 8+ channels (PyAV 18
    # reports one plane too many for those, and reading it crashes the process).
    resamplers = {} if resamplers is None else resamplers
    key = (frame.format.name, frame.layout.name, frame.sample_rate)
    if key not in resamplers:
        resamplers[key] = av.AudioResampler(format="flt", layout="mono", rate=frame.sample_rate, options=DOWNMIX)
    out = resamplers[key].resample(frame)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out]) if out else np.zeros(0, np.float32)


class _SeekMissed(Exception):
    """The audio seek landed after the start of the range needed."""


def _decode(path: str, lo: float, hi: float, origin: float,
            seek: bool) -> tuple[np.ndarray, np.ndarray, int, tuple[float, float]]:
    """Native-rate mono samples of [lo, hi), their coverage mask, the rate and the track's declared [start, end)."""
    with av.open(path) as container:
        if not container.streams.audio:
            raise MissingAudioError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        tb = float(stream.time_base)
        start = stream.start_time * tb - origin if stream.start_time is not None else 0.0
        end = start + stream.duration * tb if stream.duration else math.inf
        seek = seek and lo - start > _SEEK_AFTER_S
        if seek:
            container.seek(int((lo + origin - _SEEK_AFTER_S / 2) / tb), stream=stream)
        # The decoder's rate, not the container's: they differ for HE-AAC (SBR doubles the rate).
        rate, samples, valid, first, expected = stream.codec_context.sample_rate, None, None, 0, None
        resamplers: dict = {}
        for frame in container.decode(stream):
            if frame.pts is None:
                raise VideoDecodeError(f"{path}: audio frame without a timestamp")
            t = frame.pts * tb - origin
            if samples is None:
                if seek and t > lo:
                    raise _SeekMissed()
                rate = frame.sample_rate
                first = int(round(lo * rate))  # integer sample clock: frames tile without rounding gaps
                samples = np.zeros(max(0, int(round(hi * rate)) - first), np.float32)
                valid = np.zeros(len(samples), bool)
            elif frame.sample_rate != rate:
                raise VideoDecodeError(f"{path}: the audio sample rate changes from {rate} to {frame.sample_rate} Hz")
            if t >= hi:
                break
            i = int(round(t * rate)) - first  # placed by timestamp: priming samples never shift the audio
            # A coarse container clock (Matroska: 1 ms) jitters contiguous frames: keep them contiguous.
            if expected is not None and abs(i - expected) <= math.ceil(tb * rate) + 1:
                i = expected
            x = _mono(frame, resamplers)
            expected = i + len(x)
            a, b = max(i, 0), min(i + len(x), len(samples))
            if b > a:
                samples[a:b], valid[a:b] = x[a - i:b - i], True
        if not rate:
            raise VideoDecodeError(f"{path}: the audio track declares no sample rate")
        if samples is None:  # nothing decoded from lo on: the window lies past the track
            samples = np.zeros(max(0, int(round(hi * rate)) - int(round(lo * rate))), np.float32)
            valid = np.zeros(len(samples), bool)
        return samples, valid, rate, (start, end)


def load_audio(path: str | os.PathLike, start: float, seconds: float, *, lo: float = -math.inf,
               hi: float = math.inf, rate: int = SAMPLE_RATE, origin: float = 0.0) -> Waveform:
    """Mono audio of [start, start + seconds) at `rate` Hz; zeros (valid=False) outside [lo, hi) or the track.

    Times are on the clip timeline (container time minus `origin`). Raises MissingAudioError without an
    audio track and VideoDecodeError for a corrupt or truncated one.
    """
    path = os.fspath(path)
    n = int(round(seconds * rate))
    a, b = max(start, lo), min(start + seconds, hi)
    out = Waveform(np.zeros(n, np.float32), np.zeros(n, bool), start, rate)
    if b <= a:
        return out
    try:
        try:
            native, cover, native_rate, track = _decode(path, a - _MARGIN_S, b + _MARGIN_S, origin, seek=True)
        except _SeekMissed:
            native, cover, native_rate, track = _decode(path, a - _MARGIN_S, b + _MARGIN_S, origin, seek=False)
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"{path}: cannot decode the audio track ({e})") from e
    # Resampling keeps time: sample j of either buffer sits at t0 + j / its rate.
    resampled = librosa.resample(native, orig_sr=native_rate, target_sr=rate) if native_rate != rate else native
    t0 = round((a - _MARGIN_S) * native_rate) / native_rate
    j = np.arange(n) + int(round((start - t0) * rate))
    inside = (j >= 0) & (j < len(resampled))
    out.samples[inside] = resampled[j[inside]]
    out.valid[inside] = cover[np.minimum(j[inside] * native_rate // rate, len(cover) - 1)]
    times = start + np.arange(n) / rate
    out.valid[(times < a) | (times >= b)] = False
    out.samples[~out.valid] = 0.0  # neither margin nor resampler ringing leaks into the padding
    # Audio that stops well before the track's declared end is lost data, not a short track.
    first, last = max(a, track[0]), min(b, track[1])
    decoded = times[out.valid][-1] if out.valid.any() else first
    if last - first > 0.5 and last - decoded > 0.5:
        raise VideoDecodeError(f"{path}: audio stops at {decoded:.3f} s but the track declares "
                               f"[{track[0]:.3f}, {track[1]:.3f}) s (truncated or corrupt audio)")
    return out


FRAMES_PER_SECOND = SAMPLE_RATE / MEL["hop_length"]  # spectrogram frames per second of audio


def mel_centres(mel_bins: int) -> np.ndarray:
    """Centre frequency in Hz of each bin of `log_mel` (librosa's mel scale between MEL's fmin and fmax)."""
    return librosa.mel_frequencies(n_mels=mel_bins + 2, fmin=MEL["fmin"], fmax=MEL["fmax"])[1:-1]


def log_mel(samples: np.ndarray, mel_bins: int = 128) -> np.ndarray:
    """Log-mel spectrogram of 16 kHz mono samples, float32 (time, mel): 1 + n // 160 frames (Sec. 4.2)."""
    mel = librosa.feature.melspectrogram(y=np.asarray(samples, np.float32), n_mels=mel_bins, **MEL)
    return np.log(mel + LOG_EPS).T.astype(np.float32)


def spectrogram(samples: np.ndarray, mel_bins: int, frames: int) -> np.ndarray:
    """Log-mel of exactly `frames` frames (100 per second): extra last frames cropped, missing ones silent."""
    spec = log_mel(samples, mel_bins)
    # librosa centres frames, so n samples give 1 + n // 160 frames: the one past the window is dropped.
    return librosa.util.fix_length(spec, size=frames, axis=0, constant_values=SILENCE)


def spectrogram_stats(spectrograms: Iterable[np.ndarray]) -> tuple[float, float]:
    """Mean and standard deviation of all values of a dataset's spectrograms (for `normalise`)."""
    count, mean, m2 = 0, 0.0, 0.0
    for spec in spectrograms:
        x = np.asarray(spec, np.float64).ravel()
        if not x.size:
            continue
        # Chan et al.'s pairwise update: exact in one pass, no catastrophic cancellation.
        n, m = x.size, float(x.mean())
        delta, total = m - mean, count + n
        m2 += float(((x - m) ** 2).sum()) + delta ** 2 * count * n / total
        mean += delta * n / total
        count = total
    if count == 0:
        raise ValueError("spectrogram_stats needs at least one non-empty spectrogram")
    return mean, math.sqrt(m2 / count)


def normalise(spec: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Standardise a spectrogram with dataset statistics: (spec - mean) / std, float32."""
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    return ((np.asarray(spec, np.float32) - mean) / std).astype(np.float32)
