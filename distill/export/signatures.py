"""The edge model's signature names, shared by the converter, the quantizer, the card and the
LiteRT-LM bundle: LiteRT-LM's conventions (`prefill`, `decode`, `kv_cache_{k,v}_{layer}`)."""
from __future__ import annotations

PREFILL, DECODE = "prefill", "decode"


def cache_names(n_layers: int) -> list[str]:
  """Cache tensor names in the order the step function takes and returns them."""
  return [f"kv_cache_{c}_{i}" for i in range(n_layers) for c in "kv"]
