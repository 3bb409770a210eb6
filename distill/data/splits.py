"""The split rule shared by `text:` globs and the embedded corpus: a document's key decides."""
from __future__ import annotations

import hashlib

VALIDATION_MODULUS = 10


def split_for_key(key: str) -> str:
  """'validation' when md5(key) mod 10 == 0 else 'train'; `hash()` is salted per process."""
  digest = int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16)
  return "validation" if digest % VALIDATION_MODULUS == 0 else "train"
