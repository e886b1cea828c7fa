"""The training layer: the loop, losses, the optimiser, evaluation and metrics."""
