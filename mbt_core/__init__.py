"""mbt_core: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021) in JAX/Flax."""
from mbt_core.config import MBTConfig, PRESETS
from mbt_core.model import MBT, dummy_inputs
from mbt_core.tokenise import tokenise

__all__ = ["MBT", "MBTConfig", "PRESETS", "dummy_inputs", "tokenise"]
