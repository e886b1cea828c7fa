"""Write mp4 files with PyAV: H.264 or MPEG-4 video from uint8 RGB frames, AAC audio from float samples.

Used by the synthetic benchmark (`mbt synth`) and by the tests that need real video files on disk.
Encoders run single-threaded; libx264 still varies a few bytes from one encode of the same frames to the next.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Mapping, Sequence

import av
import numpy as np

AUDIO_FRAME = 1024  # samples per AAC frame


def write_video(path: str | Path, frames: np.ndarray | None, fps: float = 25.0, *,
                times: Sequence[float] | None = None, codec: str = "libx264",
                audio: np.ndarray | None = None, rate: int = 16000, layout: str | None = None,
                audio_start: float = 0.0, audio_codec: str = "aac", container: str = "mp4", faststart: bool = False,
                options: Mapping[str, str] | None = None, audio_options: Mapping[str, str] | None = None,
                audio_bit_rate: int | None = None, metadata: Mapping[str, str] | None = None,
                rotation: int = 0) -> Path:
    """Write a video of H.264/MPEG-4 `frames` (uint8 RGB) at `fps` or at explicit `times` (VFR), plus audio.

    `audio` is float32 (channels, samples) at `rate` (AAC, or e.g. "pcm_s16le" in "matroska");
    `frames=None` writes an audio-only file.
    `options` and `audio_options` go to the encoders (e.g. {"crf": "20"}, {"aac_coder": "fast"}),
    `metadata` into the container's tags; `rotation` (degrees counter-clockwise) into the display matrix,
    as a phone's portrait video carries it.
    """
    path = Path(path)
    muxer_options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, options=muxer_options) as out:
        out.metadata.update(metadata or {})
        video = audio_stream = None
        if frames is not None:
            video = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000), options=dict(options or {}))
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
            video.codec_context.thread_count = 1
            if rotation:
                video.set_display_rotation(rotation)
            if times is not None:  # millisecond clock for variable-rate timestamps
                video.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, np.float32))
            layout = layout or {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}[audio.shape[0]]
            audio_stream = out.add_stream(audio_codec, rate=rate, layout=layout, options=dict(audio_options or {}))
            if audio_bit_rate:
                audio_stream.bit_rate = audio_bit_rate
        if video is not None:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                if times is not None:
                    frame.pts, frame.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
        if audio_stream is not None:
            offset = int(round(audio_start * rate))
            for s in range(0, audio.shape[1], AUDIO_FRAME):
                # Interleaved: PyAV 18 miscounts the planes of a planar frame of 8+ channels (7.1).
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, s:s + AUDIO_FRAME].T).reshape(1, -1),
                                                   format="flt", layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = rate, offset + s, Fraction(1, rate)
                out.mux(audio_stream.encode(frame))
            out.mux(audio_stream.encode(None))
    return path
