"""A packed stream cut into windows of seq_len + 1 tokens; batches of window ids (grain)."""
from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from distill.data import tokenizer as tok_lib

# Fixed so the transfer set (fraction < 1) is the same whatever the training seed.
_TRANSFER_PERMUTATION_SEED = 20240501


class RowSource:
  """Training rows by id: `num_windows` of them, `rows(ids)` a batch ({"inputs", "targets",
  "mask"}; id -1 a mask-0 padding row). Packed windows and table examples are both one."""

  num_windows: int

  def rows(self, ids: Sequence[int]) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def rows_with_ids(self, ids: Sequence[int]) -> dict[str, np.ndarray]:
    # The window id keys per-window side data such as an offline teacher cache.
    return dict(self.rows(ids), window=np.asarray(ids, np.int32))


class Windows(RowSource):
  """Row `i` of the stream cut into windows of seq_len + 1 tokens, as a batch element."""

  def __init__(self, stream: np.ndarray, seq_len: int, pad_id: int, what: str):
    if seq_len < 1:
      raise ValueError(f"data.seq_len must be >= 1, got {seq_len}")
    self.stream, self.seq_len, self.pad_id = stream, seq_len, pad_id
    width = seq_len + 1
    n = stream.size
    if n < width:
      raise ValueError(f"{what} has {n} tokens, fewer than seq_len + 1 = {width}; lower "
                       "data.seq_len or add data")
    # A tail with a single token has no target, so it makes no window.
    self.num_windows = n // width + (1 if n % width >= 2 else 0)

  def rows(self, ids: Sequence[int]) -> dict[str, np.ndarray]:
    width = self.seq_len + 1
    win = np.full((len(ids), width), self.pad_id, np.int32)
    real = np.zeros((len(ids), width), bool)
    for r, i in enumerate(ids):
      if i < 0:  # Padding row of a short final eval batch.
        continue
      chunk = self.stream[i * width:(i + 1) * width]
      win[r, :chunk.size] = chunk
      real[r, :chunk.size] = True
    return {"inputs": win[:, :-1], "targets": win[:, 1:],
            "mask": real[:, 1:].astype(np.float32)}

def pad_id(tokenizer: tok_lib.Tokenizer) -> int:
  """The id written into padded positions (samplers pad with it too). Padded positions carry
  mask 0, so any id works; 0 keeps them in range."""
  if tokenizer.pad_id is not None:
    return tokenizer.pad_id
  return tokenizer.eos_id if tokenizer.eos_id is not None else 0


def local_batch(batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"global batch_size={batch_size} must be a positive multiple of the "
                     f"process count {process_count}")
  return batch_size // process_count


def _dev_count(num_windows: int, dev_fraction: float) -> int:
  if not 0.0 <= dev_fraction < 1.0:
    raise ValueError(f"data dev fraction must be in [0, 1), got {dev_fraction}")
  n_dev = max(1, int(round(num_windows * dev_fraction))) if dev_fraction else 0
  if n_dev >= num_windows:
    raise ValueError(f"a dev split of {n_dev} of the {num_windows} train windows leaves none to "
                     "train on; lower data.dev_fraction or add data")
  return n_dev


def _permutation(num_windows: int) -> np.ndarray:
  return np.random.default_rng(_TRANSFER_PERMUTATION_SEED).permutation(num_windows)


def transfer_window_ids(num_windows: int, fraction: float, dev_fraction: float) -> np.ndarray:
  """The first `fraction` of a fixed permutation of the train windows, in ascending order,
  after the dev split (its last `dev_fraction`, `dev_window_ids`) is set aside: no stage
  trains on the dev split, whatever its fraction. dev_fraction 0 keeps every window."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"data transfer fraction must be in (0, 1], got {fraction}")
  pool = num_windows - _dev_count(num_windows, dev_fraction)
  keep = max(1, int(round(pool * fraction)))
  return np.sort(_permutation(num_windows)[:keep])


def dev_window_ids(num_windows: int, dev_fraction: float) -> np.ndarray:
  """The dev split: the last `dev_fraction` of the same fixed permutation, ascending. Carved
  from the train split (the validation split stays for the report's figures) and held out of
  every training stage; it selects checkpoints and learning rates."""
  n_dev = _dev_count(num_windows, dev_fraction)
  return np.sort(_permutation(num_windows)[num_windows - n_dev:])


def batched(ids, rows, batch_size: int, seed: int, lo: int, local: int) -> grain.DatasetIterator:
  """ids -> shuffle(seed) -> repeat -> global batches -> this process's rows via `rows`."""

  def gather(global_ids: np.ndarray) -> dict[str, np.ndarray]:
    return rows(global_ids[lo:lo + local].tolist())

  ds = (grain.MapDataset.source(ids)
        .shuffle(seed=int(seed) % 2**32)
        .repeat(None)
        .batch(batch_size, drop_remainder=True)  # Endless; avoids a length overflow.
        .map(gather))
  # A small buffer: rows are cheap to gather, and memory should not scale with batch x 500.
  options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
  return iter(ds.to_iter_dataset(options))


def eval_rows(windows: RowSource, batch_size: int, max_batches: int | None, process_index: int,
               process_count: int, ids: Sequence[int] | None = None
               ) -> list[dict[str, np.ndarray]]:
  """Batches of the windows `ids` (default: all, in stream order); this process's rows of each;
  the last batch padded with mask-0 rows."""
  local = local_batch(batch_size, process_index, process_count)
  ids = list(range(windows.num_windows)) if ids is None else [int(i) for i in ids]
  n = len(ids)
  num = -(-n // batch_size)
  if max_batches is not None:
    num = min(num, int(max_batches))
  out = []
  for b in range(num):
    start = b * batch_size + process_index * local
    out.append(windows.rows([ids[i] if i < n else -1 for i in range(start, start + local)]))
  return out
