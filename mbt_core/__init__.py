"""mbt_core: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021) in JAX/Flax."""
from mbt_core.config import MBTConfig, PRESETS

__all__ = ["MBTConfig", "PRESETS"]
