"""Live widgets that carry a kernel-free HTML stand-in, on ipywidgets 7 (Colab's) and 8 alike.

A notebook exported without a kernel and without stored widget state (as `mbt suite` exports them) shows the
richest output it can render: this stand-in, instead of an empty widget area. ipywidgets 8 displays a widget
through `_repr_mimebundle_`, ipywidgets 7 through `_ipython_display_`; both give the same bundle here.
"""
from __future__ import annotations

from IPython.display import display


class StandIn:
    """Mixin for an ipywidgets container: `stand_in_html()` is shown where no kernel renders the widget."""

    def stand_in_html(self) -> str:
        """The kernel-free HTML of this widget."""
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The widget's view reference and plain text (as ipywidgets writes them), plus the stand-in."""
        bundle = {"text/plain": repr(self)[:110], "text/html": self.stand_in_html()}
        if self._view_name is not None:
            bundle["application/vnd.jupyter.widget-view+json"] = {"version_major": 2, "version_minor": 0,
                                                                  "model_id": self._model_id}
        return bundle

    def _ipython_display_(self, **kwargs) -> None:
        """Display the bundle (ipywidgets 7 calls this hook instead of reading `_repr_mimebundle_`)."""
        display(self._repr_mimebundle_(), raw=True)
        if self._view_name is not None and hasattr(self, "_handle_displayed"):
            self._handle_displayed(**kwargs)  # ipywidgets 7's `on_displayed` callbacks
