"""AttentionView: pick a layer, a head (or the mean) and a query token, and see its attention on the frames and
the spectrogram (the layer/head/token selection of bertviz, for video and audio).

A query is a modality's CLS token or a fusion token (only in fused bottleneck layers; it is updated in every
modality's stream, so its map holds each stream's row over that stream's own patches). The maps are the raw
attention of one layer (`analysis.attention_maps.attention_row`), one colour scale per picture; patches the
query gives no weight at all are shown plain. Every frame shows the weight of its own tubelet's patches
(`overlay.frame_maps`). `attention_picture` is the logic (tested
without a kernel); the widget only wires dropdowns to it.
"""
from __future__ import annotations

import html
from typing import Any, Mapping

import ipywidgets as widgets
import numpy as np

from mbt_core.analysis.attention_maps import attention_row, layer_kind, queries, query_label, stream_layers
from mbt_core.analysis.overlay import frames_overlay, spectrogram_overlay
from mbt_core.config import MBTConfig
from mbt_core.media.images import encode_png, png_data_uri, tile
from widgets.stand_in import StandIn

FRAME_WIDTH = 96  # pixels of one frame
FRAMES_PER_ROW = 8


def _stacked(images: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """RGB images one above the other, left-aligned on white."""
    width = max(i.shape[1] for i in images)
    padded = [np.pad(i, ((0, gap), (0, width - i.shape[1]), (0, 0)), constant_values=255) for i in images]
    return np.concatenate(padded)[:-gap]


def _alpha(grid_map: np.ndarray) -> float:
    """Blend weight of a map: none where the query gives these patches no weight (the picture stays plain)."""
    return 0.5 if float(np.sum(grid_map)) > 0 else 0.0


def attention_picture(example: Mapping[str, np.ndarray], attention: Mapping[str, list], config: MBTConfig,
                      layer: int, query: tuple[str, Any], head: str | int = "mean",
                      frame_width: int = FRAME_WIDTH) -> tuple[np.ndarray, str]:
    """One query's attention at one layer on the clip: frames (each with its map) above the spectrogram, and a
    caption saying where its weight goes (each modality's patches and CLS, the fusion tokens)."""
    row = attention_row(attention, config, layer, query, head)
    pictures = []
    if "rgb" in row["maps"] and "rgb" in example:
        frames = np.asarray(example["rgb"])
        size = (round(frame_width * frames.shape[1] / frames.shape[2]), frame_width)
        pictures.append(tile(frames_overlay(frames, row["maps"]["rgb"], config.patch_shape("rgb")[0], size,
                                            _alpha(row["maps"]["rgb"])), FRAMES_PER_ROW))
    if "spec" in row["maps"] and "spec" in example:
        width = frame_width * min(FRAMES_PER_ROW, config.rgb_frames)
        spec = np.asarray(example["spec"])
        height = max(round(spec.shape[1] * width / spec.shape[0]), width // 4)
        pictures.append(spectrogram_overlay(spec, row["maps"]["spec"], (height, width), _alpha(row["maps"]["spec"])))
    parts = [f"{m} patches {100 * row['maps'][m].sum():.1f}%" for m in row["maps"]]
    if config.classifier == "token":
        parts += [f"{m} CLS {100 * row['cls'][m]:.1f}%" for m in row["cls"]]
    if row["fusion"] is not None:
        parts.append(f"fusion tokens {100 * row['fusion'].sum():.1f}%")
    head_text = "mean over heads" if head == "mean" else f"head {int(head) + 1}"
    where = " (each stream's row)" if query[0] == "fusion" else ""
    caption = (f"layer {layer + 1} ({row['kind'].replace('_', ' ')}), {head_text}, query {query_label(query)}{where}: "
               + ", ".join(parts))
    return _stacked(pictures), caption


class AttentionView(StandIn, widgets.VBox):
    """Layer, head and query dropdowns over one clip's attention; shows the map on the frames and spectrogram."""

    def __init__(self, example: Mapping[str, np.ndarray], attention: Mapping[str, list], config: MBTConfig,
                 title: str = ""):
        self.example, self.attention, self.config, self.title = example, attention, config, title
        _, _, layers = stream_layers(attention, config)
        self.layer = widgets.Dropdown(description="layer", options=[
            (f"{l + 1} ({layer_kind(attention, config, l).replace('_', ' ')})", l) for l in range(layers)],
            value=layers - 1)
        self.head = widgets.Dropdown(description="head", options=[("mean", "mean")] + [
            (str(h + 1), h) for h in range(config.num_heads)], value="mean")
        self.query = widgets.Dropdown(description="query")
        self.image = widgets.Image(format="png")
        self.caption = widgets.HTML()
        header = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        super().__init__([*header, widgets.HBox([self.layer, self.head, self.query]), self.image, self.caption])
        self._set_queries()
        self.layer.observe(self._on_layer, names="value")
        self.head.observe(self._redraw, names="value")
        self.query.observe(self._redraw, names="value")
        self._redraw()

    def _set_queries(self) -> None:
        """The query options of the current layer (labels as values), keeping the chosen one where the layer has it."""
        self.queries = {query_label(q): q for q in queries(self.attention, self.config, self.layer.value)}
        keep = self.query.value if self.query.value in self.queries else next(iter(self.queries))
        self.query.options = list(self.queries)  # resets the value to the first option
        self.query.value = keep

    def _on_layer(self, change: dict) -> None:
        self._set_queries()
        self._redraw()

    def _redraw(self, change: dict | None = None) -> None:
        """Draw the current layer, head and query."""
        if self.query.value is None:
            return
        image, caption = attention_picture(self.example, self.attention, self.config, self.layer.value,
                                           self.queries[self.query.value], self.head.value)
        self.image.value = encode_png(image)
        self.caption.value = html.escape(caption)

    def stand_in_html(self) -> str:
        """The current layer, head and query as a picture and its caption, for a page without a kernel."""
        return (f"<b>{html.escape(self.title)}</b>" * bool(self.title)
                + f'<p><img alt="attention map" src="{png_data_uri(self.image.value)}"/></p><p>{self.caption.value}</p>'
                "<p><i>Other layers, heads and queries: open this notebook in Jupyter.</i></p>")

