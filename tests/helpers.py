"""Shared builders for tests: tiny configs and models."""

from distill.models.model_config import ModelConfig


def tiny_model_config(**kw) -> ModelConfig:
  base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_len=64)
  base.update(kw)
  return ModelConfig(**base)


def shrunken_config(**overrides):
  """configs/tiny.py's `small` variant (the whole pipeline in seconds) with `overrides`."""
  from configs import tiny  # pylint: disable=import-outside-toplevel
  c = tiny.get_config("small")
  for k, v in overrides.items():
    node = c
    parts = k.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = v
  return c


def write_gguf(path, *, kind="ok", arch="llama", tokenizer=True):
  """A one-tensor llama-shaped GGUF, or one broken in the way `kind` names.

  kind: "ok", "truncated" (last 64 bytes cut), "unknown_quant" (tensor type id patched to 200),
  "unsupported_quant" (a Q8_1 tensor, which gguf cannot dequantize). The tokenizer, when asked
  for, is 256 byte tokens after three specials (no merges).
  """
  import gguf  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  q = gguf.GGMLQuantizationType
  tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(0x100 + i) for i in range(256)]
  w = gguf.GGUFWriter(path, arch)
  for add, value in (("context_length", 64), ("embedding_length", 32), ("block_count", 1),
                     ("feed_forward_length", 64), ("head_count", 4), ("head_count_kv", 2),
                     ("layer_norm_rms_eps", 1e-5), ("vocab_size", len(tokens))):
    getattr(w, f"add_{add}")(value)
  if tokenizer:
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * 256)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
  if kind == "unsupported_quant":
    block, size = gguf.GGML_QUANT_SIZES[q.Q8_1]
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 32 // block * size), np.uint8),
                 raw_dtype=q.Q8_1)
  else:
    w.add_tensor("blk.0.ffn_up.weight", np.ones((4, 32), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  if kind == "truncated":
    import os  # pylint: disable=import-outside-toplevel
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) - 64)
  elif kind == "unknown_quant":
    with open(path, "rb") as f:
      data = bytearray(f.read())
    name = b"blk.0.ffn_up.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8  # n_dims (u32), two dims (u64), then type
    assert int.from_bytes(data[at:at + 4], "little") == int(q.F32)
    data[at:at + 4] = (200).to_bytes(4, "little")
    with open(path, "wb") as f:
      f.write(bytes(data))
  return path


def fit_ce(lm, params, batches, steps: int, lr: float = 3e-3):
  """`steps` of Adam on hard-label CE over `batches` (an iterator of distill.data batches).

  For tests that need a briefly trained model: peaked logits, real text from greedy decoding.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt, x, y, m):
    def loss(p):
      logp = jax.nn.log_softmax(lm.apply(p, x))
      nll = -jnp.take_along_axis(logp, y[..., None], -1)[..., 0]
      return (nll * m).sum() / m.sum()
    upd, opt = tx.update(jax.grad(loss)(params), opt, params)
    return optax.apply_updates(params, upd), opt

  opt = tx.init(params)
  for _ in range(steps):
    b = next(batches)
    params, opt = step(params, opt, b["inputs"], b["targets"], b["mask"])
  return params


def train_byte_lm(root, cfg, steps: int, seed: int = 0, docs: int = 40):
  """(LM, params, ByteTokenizer): `cfg` briefly trained (`fit_ce`, lr 1e-2) on the first
  `docs` pydoc topics, written as text files under root/text (shared by calls with one root)."""
  import jax  # pylint: disable=import-outside-toplevel
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  from distill import data  # pylint: disable=import-outside-toplevel
  from distill.data import tokenizer as tokenizers  # pylint: disable=import-outside-toplevel
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel
  text = root / "text"
  if not text.exists():
    text.mkdir()
    keys = sorted(topics.topics)
    for i in range(docs):
      (text / f"doc{i:02d}.txt").write_text(topics.topics[keys[i]])
  lm, tok = LM(cfg), tokenizers.ByteTokenizer()
  spec = data_spec(f"text:{root}/text/*.txt", seq_len=64, data_dir=str(root / "data"))
  it = data.make_train_iterator(spec, tok, str(root), batch_size=16, seed=seed)
  return lm, fit_ce(lm, lm.init(jax.random.key(seed)), it, steps, lr=1e-2), tok


class Interrupt(Exception):
  pass


class KillAfter:
  """Wraps a data iterator and dies after `n` batches, like a preempted process."""

  def __init__(self, it, n):
    self.it, self.n = it, n

  def __next__(self):
    if self.n == 0:
      raise Interrupt()
    self.n -= 1
    return next(self.it)

  def get_state(self):
    return self.it.get_state()

  def set_state(self, s):
    self.it.set_state(s)


def tree_digest(root) -> dict:
  """{path relative to root: sha256 of its bytes} for every file under root: "nothing on disk
  changed" is then one dict comparison."""
  import hashlib  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  out = {}
  for d, _, files in os.walk(root):
    for name in files:
      path = os.path.join(d, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def data_spec(name="pydoc_topics", **kw):
  """A DataSpec with the tiny configs' values for the fields a test leaves out."""
  from distill.data import DataSpec  # pylint: disable=import-outside-toplevel
  base = dict(name=name, data_dir="", tokenizer="byte", seq_len=128, add_bos=False,
              max_documents=None, dev_fraction=0.0, columns=(),
              validation_name="")
  base.update(kw)
  return DataSpec(**base)
