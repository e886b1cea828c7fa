"""The analysis layer: attention rollout, flow masks, overlays, patch grids, per-class AP, run reports."""
