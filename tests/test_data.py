"""Data: TFDS pydoc corpus, packing, windows, resumable + sharded iterators, errors."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distill import data
from distill.data import tokenizer as tokenizers
from tests.helpers import data_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTE = tokenizers.ByteTokenizer()


def _cfg(**kw):
  return data_spec(**dict(dict(seq_len=64), **kw))


@pytest.fixture(scope="session")
def pydoc_workdir(tmp_path_factory):
  """One real TFDS build of the embedded corpus for the whole session."""
  workdir = str(tmp_path_factory.mktemp("pydoc"))
  data.prepare(_cfg(), workdir)
  return workdir


@pytest.fixture(scope="session")
def text_glob(tmp_path_factory):
  """40 small user files: enough that both splits get some."""
  d = tmp_path_factory.mktemp("texts")
  rng = np.random.default_rng(0)
  words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
  for i in range(40):
    n = int(rng.integers(20, 80))
    (d / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, n)) + f" #{i}\n")
  return f"text:{d}/*.txt"


def _rows_as_stream(batches):
  """Real tokens of eval rows re-joined: each window is inputs[0] + its masked targets."""
  pieces = []
  for batch in batches:
    for inp, tgt, m in zip(batch["inputs"], batch["targets"], batch["mask"]):
      if m.any():
        pieces.append(np.concatenate([inp[:1], tgt[m > 0]]))
  return np.concatenate(pieces)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# ----------------------------------------------------------------- corpus, splits


def test_pydoc_splits_disjoint_and_by_md5(pydoc_workdir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("pydoc_topics", data_dir=os.path.join(pydoc_workdir, "data"))
  keys = {}
  for split in ("train", "validation"):
    keys[split] = {ex["key"].decode() for ex in builder.as_data_source(split)}
  assert not keys["train"] & keys["validation"]
  assert keys["train"] | keys["validation"] == set(topics.topics)
  assert keys["validation"] == {k for k in topics.topics if data.split_for_key(k) == "validation"}
  assert keys["validation"]  # The rule must leave something to evaluate on.


def test_stream_is_documents_with_eos(pydoc_workdir):
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  for split in ("train", "validation"):
    stream = np.asarray(data.token_stream(_cfg(), BYTE, pydoc_workdir, split))
    assert stream.dtype == np.int32 and stream[-1] == BYTE.eos_id
    # Bytes never map to EOS, so splitting on it recovers the documents exactly.
    docs = np.split(stream, np.flatnonzero(stream == BYTE.eos_id)[:-1] + 1)
    texts = sorted(BYTE.decode(d) for d in docs)
    want = sorted(v for k, v in topics.topics.items() if data.split_for_key(k) == split)
    assert texts == want


def test_prepare_warm_reuses_cache(pydoc_workdir):
  cache = os.path.join(pydoc_workdir, "data", "packed", "pydoc_topics")
  before = {f: os.stat(os.path.join(cache, f)).st_mtime_ns for f in os.listdir(cache)}
  data.prepare(_cfg(), pydoc_workdir)
  after = {f: os.stat(os.path.join(cache, f)).st_mtime_ns for f in os.listdir(cache)}
  assert before == after
  meta = [json.load(open(os.path.join(cache, f))) for f in before if f.endswith(".json")]
  assert {m["split"] for m in meta} == {"train", "validation"}


def test_data_dir_respected(tmp_path, text_glob):
  data_dir = tmp_path / "elsewhere"
  data.prepare(_cfg(name=text_glob, data_dir=str(data_dir)), str(tmp_path / "wd"))
  assert list((data_dir / "packed").iterdir())
  assert not (tmp_path / "wd").exists()


def test_tokenizer_keys_cache(tmp_path, text_glob):
  cfg = _cfg(name=text_glob)
  plain = np.asarray(data.token_stream(cfg, BYTE, str(tmp_path), "train"))
  with_bos = np.asarray(data.token_stream(_cfg(name=text_glob, add_bos=True), BYTE,
                                          str(tmp_path), "train"))
  assert with_bos[0] == BYTE.bos_id and plain[0] != BYTE.bos_id
  assert with_bos.size > plain.size


# ------------------------------------------------------------------ windows, eval


def test_eval_batches_cover_stream_in_order(pydoc_workdir):
  cfg = _cfg(seq_len=100)
  batches = data.eval_batches(cfg, BYTE, pydoc_workdir, batch_size=8)
  stream = np.asarray(data.token_stream(cfg, BYTE, pydoc_workdir, "validation"))
  np.testing.assert_array_equal(_rows_as_stream(batches), stream)
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == b["mask"].shape == (8, 100)
    assert b["inputs"].dtype == np.int32 and b["mask"].dtype == np.float32
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  # Padding sits at the very end only, with pad ids and mask 0.
  flat_mask = np.concatenate([b["mask"].ravel() for b in batches])
  assert np.all(np.diff(flat_mask) <= 0) and flat_mask[-1] == 0
  real_rows = sum(int((b["mask"].sum(1) > 0).sum()) for b in batches)
  assert real_rows == -(-(len(stream) - 1) // 101)
  assert len(batches) == -(-real_rows // 8)
  last = batches[-1]
  assert np.all(last["targets"][last["mask"] == 0] == BYTE.pad_id)
  assert np.all(last["inputs"][last["mask"].sum(1) == 0] == BYTE.pad_id)
  again = data.eval_batches(cfg, BYTE, pydoc_workdir, batch_size=8)
  _assert_same(batches, again)
  assert len(data.eval_batches(cfg, BYTE, pydoc_workdir, batch_size=8, max_batches=2)) == 2


def test_train_rows_shift_by_one(pydoc_workdir):
  it = data.make_train_iterator(_cfg(), BYTE, pydoc_workdir, batch_size=8, seed=1)
  for b in _take(it, 4):
    assert b["inputs"].shape == (8, 64) and b["inputs"].dtype == np.int32
    assert b["mask"].dtype == np.float32
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


def test_epochs_cover_every_window_and_reshuffle(tmp_path, text_glob):
  cfg = _cfg(name=text_glob, seq_len=48)
  windows = data.eval_batches(cfg, BYTE, str(tmp_path), split="train", batch_size=1)
  index = {w["inputs"].tobytes() + w["mask"].tobytes(): i for i, w in enumerate(windows)}
  n = len(windows)
  assert len(index) == n > 20  # Windows must be told apart by content.
  it = data.make_train_iterator(cfg, BYTE, str(tmp_path), batch_size=1, seed=7)
  seen = [index[b["inputs"].tobytes() + b["mask"].tobytes()] for b in _take(it, 2 * n)]
  assert sorted(seen[:n]) == list(range(n)) == sorted(seen[n:])
  assert seen[:n] != seen[n:]  # A new permutation each epoch.


# --------------------------------------------------------- resume, shards, fraction


def test_resume_from_state(pydoc_workdir):
  it = data.make_train_iterator(_cfg(), BYTE, pydoc_workdir, batch_size=8, seed=3)
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # Must survive a checkpoint as JSON.
  want = _take(it, 3)
  fresh = data.make_train_iterator(_cfg(), BYTE, pydoc_workdir, batch_size=8, seed=3)
  fresh.set_state(state)
  _assert_same(_take(fresh, 3), want)


def test_same_seed_same_batches_other_seed_differs(pydoc_workdir):
  make = lambda seed: data.make_train_iterator(_cfg(), BYTE, pydoc_workdir, batch_size=4,
                                               seed=seed)
  _assert_same(_take(make(5), 3), _take(make(5), 3))
  assert not np.array_equal(next(make(5))["inputs"], next(make(6))["inputs"])


@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_tile_global_batch(pydoc_workdir, count):
  cfg = _cfg()
  glob_it = data.make_train_iterator(cfg, BYTE, pydoc_workdir, batch_size=8, seed=11)
  local_its = [data.make_train_iterator(cfg, BYTE, pydoc_workdir, batch_size=8, seed=11,
                                        process_index=p, process_count=count)
               for p in range(count)]
  for _ in range(3):
    whole = next(glob_it)
    parts = [next(it) for it in local_its]
    for k in whole:
      assert parts[0][k].shape[0] == 8 // count
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_eval_process_shards_tile(pydoc_workdir):
  whole = data.eval_batches(_cfg(), BYTE, pydoc_workdir, batch_size=8, max_batches=3)
  parts = [data.eval_batches(_cfg(), BYTE, pydoc_workdir, batch_size=8, max_batches=3,
                             process_index=p, process_count=2) for p in range(2)]
  for i, w in enumerate(whole):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][i]["inputs"], parts[1][i]["inputs"]]), w["inputs"])


def test_transfer_fraction_is_fixed_subset(tmp_path, text_glob):
  cfg = _cfg(name=text_glob, seq_len=48)
  windows = data.eval_batches(cfg, BYTE, str(tmp_path), split="train", batch_size=1)
  index = {w["inputs"].tobytes() + w["mask"].tobytes(): i for i, w in enumerate(windows)}
  n = len(windows)
  assert len(index) == n > 20  # Windows must be told apart by content.
  keep = data.transfer_window_ids(n, 0.25, 0.0)
  assert len(keep) == round(n * 0.25)
  assert keep.max() > n // 2  # Spans the corpus rather than its head.

  def seen(seed, fraction):
    it = data.make_train_iterator(cfg, BYTE, str(tmp_path), batch_size=1, seed=seed,
                                  fraction=fraction)
    return [index[b["inputs"].tobytes() + b["mask"].tobytes()] for b in _take(it, len(keep))]

  # Baseline and student with the same seed and fraction see identical data.
  assert seen(0, 0.25) == seen(0, 0.25)
  # The subset does not depend on the training seed, only its order does.
  assert sorted(seen(0, 0.25)) == sorted(seen(1, 0.25)) == keep.tolist()
  it = data.make_train_iterator(cfg, BYTE, str(tmp_path), batch_size=1, seed=0, fraction=0.25)
  assert [index[b["inputs"].tobytes() + b["mask"].tobytes()] for b in _take(it, len(keep))] \
      == seen(0, 0.25)


def test_training_path_does_not_import_tensorflow(pydoc_workdir):
  script = textwrap.dedent(f"""
      import json, sys
      from distill import data
      cfg = data.DataSpec(name="pydoc_topics", data_dir="", tokenizer="byte", seq_len=64,
                          add_bos=False, max_documents=None, dev_fraction=0.0,
                          columns=(), validation_name='')
      it = data.make_train_iterator(cfg, None, {pydoc_workdir!r}, batch_size=8, seed=0)
      batch = next(it)
      data.eval_batches(cfg, None, {pydoc_workdir!r}, batch_size=8, max_batches=1)
      data.prepare(cfg, {pydoc_workdir!r})
      print(json.dumps([batch["inputs"].shape[0],
                        sorted(m for m in sys.modules if m.split(".")[0] in
                               ("tensorflow", "tensorflow_datasets"))]))
  """)
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=True)
  rows, tf_modules = json.loads(out.stdout.strip().splitlines()[-1])
  assert rows == 8 and tf_modules == []


# ------------------------------------------------------------------------- errors


def test_unknown_tfds_name(tmp_path):
  with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_corpus'.*text:"):
    data.prepare(_cfg(name="no_such_corpus"), str(tmp_path))


def test_text_glob_errors(tmp_path):
  with pytest.raises(ValueError, match="matched no files"):
    data.prepare(_cfg(name=f"text:{tmp_path}/none/*.txt"), str(tmp_path))
  for i in range(5):
    (tmp_path / f"empty{i}.txt").write_text("  \n")
  with pytest.raises(ValueError, match="no non-empty document"):
    data.prepare(_cfg(name=f"text:{tmp_path}/*.txt"), str(tmp_path))


def test_seq_len_longer_than_split(tmp_path, text_glob):
  with pytest.raises(ValueError, match="fewer than seq_len"):
    data.eval_batches(_cfg(name=text_glob, seq_len=10**7), BYTE, str(tmp_path), batch_size=2)


def test_bad_batch_and_fraction(pydoc_workdir):
  with pytest.raises(ValueError, match="multiple of the process count"):
    data.make_train_iterator(_cfg(), BYTE, pydoc_workdir, batch_size=6, seed=0,
                             process_count=4)
  with pytest.raises(ValueError, match="fraction"):
    data.make_train_iterator(_cfg(), BYTE, pydoc_workdir, batch_size=8, seed=0, fraction=0.0)
