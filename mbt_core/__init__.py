"""mbt_core: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021) in JAX/Flax."""
from mbt_core.config import MBTConfig, PRESETS
from mbt_core.data.tokenise import tokenise
from mbt_core.model.model import MBT, dummy_inputs

__all__ = ["MBT", "MBTConfig", "PRESETS", "dummy_inputs", "tokenise"]
