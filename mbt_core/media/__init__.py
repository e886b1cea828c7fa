"""Media: decoding audio and video, writing video, frames and spectrograms as pictures."""
