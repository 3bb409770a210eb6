"""Students cut from the teacher: structured pruning ranked by activations (Minitron).

  python -m distill.prune --teacher=runs/tiny/teacher --out=/tmp/pruned --depth=2 \
      --width.d_model=64 --width.d_ff=192 --width.heads=4 [--calib_batches=8] [--method=random]

Importance comes from forward activations on calibration batches of the transfer set
(Minitron, arXiv 2407.14679): mean |h| per MLP neuron (the gated intermediate that `down`
reads), mean L2 norm per attention head of its output before `o` (summed over the query heads
of a KV group, the unit GQA can drop), mean |x| per embedding channel at every norm's input
(the residual stream), and per block 1 - cos(block input, block output). One jitted pass per
calibration batch computes all of them.

Width pruning keeps the top-ranked units and slices every weight that touches them; depth
pruning drops the least important blocks. `head_dim` and RoPE stay as they are, so a pruned
student's config states `head_dim` explicitly. Vocabulary trimming lives in `distill.vocab_trim`.

Shape letters: B batch, T length, L layers, D d_model, N query heads, M kv heads,
G = N // M, K head dim, F d_ff.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from distill.errors import ConfigError
from distill.models.transformer import LM
from distill.models.model_config import ModelConfig
from distill.models.ops import project

METHODS = ("activation", "random")


# ---------------------------------------------------------------------------------------------
# Target shapes


def target_config(teacher: ModelConfig, *, n_layers=None, d_model=None, d_ff=None,
                  n_heads=None) -> ModelConfig:
  """The pruned model's config; ConfigError (one line) for shapes the teacher cannot give.

  Heads are pruned as whole KV groups, so the group size G = n_heads // n_kv_heads is kept
  and `n_heads` must be a multiple of it.
  """
  t = teacher
  n_layers = t.n_layers if n_layers is None else int(n_layers)
  d_model = t.d_model if d_model is None else int(d_model)
  d_ff = t.d_ff if d_ff is None else int(d_ff)
  n_heads = t.n_heads if n_heads is None else int(n_heads)
  group = t.n_heads // t.n_kv_heads
  for name, want, have in (("depth", n_layers, t.n_layers), ("d_model", d_model, t.d_model),
                           ("d_ff", d_ff, t.d_ff), ("heads", n_heads, t.n_heads)):
    if want < 1:
      raise ConfigError(f"pruning target {name}={want} must be >= 1")
    if want > have:
      raise ConfigError(f"pruning target {name}={want} is larger than the teacher's {have}; "
                        f"pruning only removes units, give {name} <= {have}")
  if n_heads % group:
    raise ConfigError(f"pruning target heads={n_heads} is not a multiple of the teacher's KV "
                      f"group size {group} (n_heads {t.n_heads} / n_kv_heads {t.n_kv_heads}); "
                      "whole KV groups are kept, give a multiple of "
                      f"{group}")
  return t.replace(n_layers=n_layers, d_model=d_model, d_ff=d_ff, n_heads=n_heads,
                   n_kv_heads=n_heads // group, head_dim=t.k)


# ---------------------------------------------------------------------------------------------
# The instrumented forward


def _identity_outputs(lm: LM, params):
  """Params whose `o` and `down` are identities (biases zero).

  Through the model's own Attention and MLP modules these then return the per-head attention
  outputs [.., N*K] and the MLP intermediate [.., F] themselves, so the instrumented forward
  reuses the real attention code instead of a copy that could drift from it. Multiplying by
  an exact identity and adding zeros changes no bit.
  """
  cfg = lm.cfg
  nk, f = cfg.n_heads * cfg.k, cfg.d_ff
  out = {}
  for i in range(cfg.n_layers):
    blk = dict(params[f"block_{i}"])
    attn, mlp = dict(blk["attn"]), dict(blk["mlp"])
    dt = attn["o"].dtype
    attn["o"] = jnp.eye(nk, dtype=dt).reshape(cfg.n_heads, cfg.k, nk)
    if cfg.out_bias:
      attn["o_bias"] = jnp.zeros((nk,), dt)
    mlp["down"] = jnp.eye(f, dtype=dt)
    if cfg.mlp_bias:
      mlp["down_bias"] = jnp.zeros((f,), dt)
    blk["attn"], blk["mlp"] = attn, mlp
    out[f"block_{i}"] = blk
  return dict(params, **out)


def instrumented_forward(lm: LM, params, tokens, mask=None):
  """(logits [B, T, V], statistics) with the same math as `lm.apply`.

  Statistics are sums over tokens weighted by `mask` [B, T] (padding excluded):
    count [], channels [D] (|x| at every norm input), heads [L, N] (per-head output L2 norm),
    neurons [L, F] (|h| of the MLP intermediate), blocks [L] (1 - cos(block in, block out)),
    norm_sq [2L + 1, D] (x^2 at each norm input: attn and mlp of every block, then final).
  """
  cfg = lm.cfg
  dt = jnp.dtype(cfg.dtype)
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t), tokens.shape)
  w = jnp.ones((b, t), jnp.float32) if mask is None else mask.astype(jnp.float32)
  model, ident = lm.module(params), lm.module(_identity_outputs(lm, params))

  def tok_sum(v):  # [B, T, ...] -> [...], mask-weighted
    return jnp.einsum("BT,BT...->...", w, v.astype(jnp.float32))

  def norm_input(v):  # |x| for the channel ranking, x^2 for this norm site's gain
    nonlocal channels
    channels = channels + tok_sum(jnp.abs(v))
    norm_sq.append(tok_sum(jnp.square(v.astype(jnp.float32))))

  # The embedding prologue of Transformer.__call__.
  x = jnp.take(params["embed"], tokens, axis=0).astype(dt)
  if cfg.embed_scale:
    x = x * jnp.asarray(math.sqrt(cfg.d_model), dt)
  if cfg.pos == "learned":
    x = x + jnp.take(params["pos_embed"], positions, axis=0).astype(dt)
  channels = jnp.zeros((cfg.d_model,), jnp.float32)
  heads, neurons, blocks, norm_sq = [], [], [], []
  for i in range(cfg.n_layers):
    # Block.__call__, with the per-head and per-neuron activations taken on the way.
    blk, blk_id = getattr(model, f"block_{i}"), getattr(ident, f"block_{i}")
    x_in = x
    norm_input(x)
    per_head, _ = blk_id.attn(blk.attn_norm(x), positions)  # [B, T, N*K]
    per_head = per_head.reshape(b, t, cfg.n_heads, cfg.k)
    heads.append(tok_sum(jnp.linalg.norm(per_head.astype(jnp.float32), axis=-1)))
    h = project(per_head, params[f"block_{i}"]["attn"]["o"])
    if cfg.out_bias:
      h = h + params[f"block_{i}"]["attn"]["o_bias"].astype(dt)
    if cfg.post_norms:
      h = blk.post_attn_norm(h)
    x = x + h
    norm_input(x)
    inner = blk_id.mlp(blk.mlp_norm(x))  # [B, T, F]
    neurons.append(tok_sum(jnp.abs(inner)))
    h = project(inner, params[f"block_{i}"]["mlp"]["down"])
    if cfg.mlp_bias:
      h = h + params[f"block_{i}"]["mlp"]["down_bias"].astype(dt)
    if cfg.post_norms:
      h = blk.post_mlp_norm(h)
    x = x + h
    a, o = x_in.astype(jnp.float32), x.astype(jnp.float32)
    cos = (a * o).sum(-1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(o, axis=-1),
                                        1e-12)
    blocks.append(tok_sum(1.0 - cos))
  norm_input(x)
  logits = lm.logits_from_hidden(params, model.final_norm(x))
  stats = {"count": w.sum(), "channels": channels, "heads": jnp.stack(heads),
           "neurons": jnp.stack(neurons), "blocks": jnp.stack(blocks),
           "norm_sq": jnp.stack(norm_sq)}
  return logits, stats


@functools.lru_cache(maxsize=8)
def _stats_fn(lm: LM):
  return jax.jit(lambda p, tokens, mask: instrumented_forward(lm, p, tokens, mask)[1])


@dataclasses.dataclass
class Importance:
  """Mean activation statistics (higher = more important), numpy on the host."""
  channels: np.ndarray  # [D]
  heads: np.ndarray  # [L, N]
  neurons: np.ndarray  # [L, F]
  blocks: np.ndarray  # [L]
  tokens: int
  norm_sq: np.ndarray | None = None  # [2L + 1, D] mean x^2 at each norm's input

  def groups(self, cfg: ModelConfig) -> np.ndarray:
    """[L, M]: a KV group's importance is the sum over its query heads."""
    g = cfg.n_heads // cfg.n_kv_heads
    return self.heads.reshape(cfg.n_layers, cfg.n_kv_heads, g).sum(-1)


def importance(lm: LM, params, batches) -> Importance:
  """Statistics over calibration batches ({"inputs": [B, T], "mask": [B, T]} dicts)."""
  fn, total = _stats_fn(lm), None
  for batch in batches:
    mask = batch.get("mask")
    mask = np.ones(np.shape(batch["inputs"]), np.float32) if mask is None else mask
    s = fn(params, jnp.asarray(batch["inputs"], jnp.int32), jnp.asarray(mask, jnp.float32))
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  if total is None:
    raise ConfigError("pruning needs at least one calibration batch; give calib_batches >= 1")
  total = jax.device_get(total)
  n = max(float(total["count"]), 1.0)
  return Importance(channels=total["channels"] / n, heads=total["heads"] / n,
                    neurons=total["neurons"] / n, blocks=total["blocks"] / n,
                    tokens=int(total["count"]), norm_sq=total["norm_sq"] / n)


# ---------------------------------------------------------------------------------------------
# Plans and slicing


@dataclasses.dataclass
class Plan:
  """Kept teacher indices, ascending: layers [L'], channels [D'], kv groups and neurons per
  kept layer ([L', M'], [L', F'])."""
  layers: np.ndarray
  channels: np.ndarray
  groups: np.ndarray
  neurons: np.ndarray

  def to_json(self) -> dict:
    return {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(self).items()}


def _top(scores, k):
  # Stable: ties keep the lower index, so "keep everything" is the identity.
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  return np.sort(order[:k])


def plan(imp: Importance | None, teacher: ModelConfig, target: ModelConfig, *,
         method: str = "activation", seed: int = 0) -> Plan:
  """Which units to keep: the top-ranked ones, or a random choice (the control)."""
  if method not in METHODS:
    raise ConfigError(f"pruning method {method!r} is unknown; use one of {', '.join(METHODS)}")
  t, s = teacher, target
  if method == "random":
    rng = np.random.default_rng(seed)
    imp = Importance(channels=rng.random(t.d_model), heads=rng.random((t.n_layers, t.n_heads)),
                     neurons=rng.random((t.n_layers, t.d_ff)), blocks=rng.random(t.n_layers),
                     tokens=0)
  layers = _top(imp.blocks, s.n_layers)
  groups = imp.groups(t)
  return Plan(layers=layers, channels=_top(imp.channels, s.d_model),
              groups=np.stack([_top(groups[i], s.n_kv_heads) for i in layers]),
              neurons=np.stack([_top(imp.neurons[i], s.d_ff) for i in layers]))


def norm_gains(norm_sq: np.ndarray | None, channels: np.ndarray) -> np.ndarray:
  """[2L + 1] gain per norm site that keeps its output's scale after dropping channels.

  An RMS norm divides by the RMS over the channels it sees; the kept channels are the
  large-activation ones, so over them alone the RMS grows and every normalized value would
  shrink. Multiplying the kept scales by rms_kept / rms_all (from calibration means of x^2)
  restores the teacher's per-channel outputs on average. Exactly 1 when nothing is dropped.
  """
  if norm_sq is None or channels.size == norm_sq.shape[-1]:
    return np.ones((0 if norm_sq is None else norm_sq.shape[0],), np.float64)
  sq = np.asarray(norm_sq, np.float64)
  return np.sqrt(sq[:, channels].mean(-1) / np.maximum(sq.mean(-1), 1e-30))


def apply_plan(params, teacher: ModelConfig, target: ModelConfig, p: Plan, gains=None):
  """Slice every weight consistently (numpy on the host); returns the pruned params.
  `gains` [2L + 1] (`norm_gains`) rescale the attn/mlp norms of each teacher block and the
  final norm; None leaves them as sliced."""
  host = jax.device_get(params)
  c = p.channels
  g = teacher.n_heads // teacher.n_kv_heads
  gains = None if gains is None or not np.size(gains) else np.asarray(gains)

  def norm(n, site=None):  # scale/bias over D
    out = {k: v[c] for k, v in n.items()}
    if gains is not None and site is not None:
      r, s = gains[site], np.asarray(out["scale"], np.float32)
      # The norm multiplies by (1 + scale) when teacher.norm_plus_one (Gemma), else by scale.
      s = (1.0 + s) * r - 1.0 if teacher.norm_plus_one else s * r
      out["scale"] = s.astype(n["scale"].dtype)
    return out

  out = {"embed": host["embed"][:, c],
         "final_norm": norm(host["final_norm"], 2 * teacher.n_layers)}
  if "unembed" in host:
    out["unembed"] = host["unembed"][c, :]
  if "pos_embed" in host:
    out["pos_embed"] = host["pos_embed"][:, c]
  for new, old in enumerate(p.layers):
    src = host[f"block_{old}"]
    kv = p.groups[new]
    q_heads = (kv[:, None] * g + np.arange(g)[None, :]).reshape(-1)  # a group's query heads
    f = p.neurons[new]
    a = src["attn"]
    attn = {"q": a["q"][c][:, q_heads], "k": a["k"][c][:, kv], "v": a["v"][c][:, kv],
            "o": a["o"][q_heads][:, :, c]}
    if "q_bias" in a:
      attn.update(q_bias=a["q_bias"][q_heads], k_bias=a["k_bias"][kv], v_bias=a["v_bias"][kv])
    if "o_bias" in a:
      attn["o_bias"] = a["o_bias"][c]
    for name in ("q_norm", "k_norm"):  # over K: head_dim is kept whole
      if name in a:
        attn[name] = a[name]
    m = src["mlp"]
    mlp = {"up": m["up"][c][:, f], "down": m["down"][f][:, c]}
    if "gate" in m:
      mlp["gate"] = m["gate"][c][:, f]
    if "up_bias" in m:
      mlp.update(up_bias=m["up_bias"][f], down_bias=m["down_bias"][c])
    blk = {"attn": attn, "mlp": mlp}
    sites = {"attn_norm": 2 * old, "mlp_norm": 2 * old + 1}
    for name in ("attn_norm", "mlp_norm", "post_attn_norm", "post_mlp_norm"):
      if name in src:
        blk[name] = norm(src[name], sites.get(name))
    out[f"block_{new}"] = blk
  _check_shapes(out, target)
  return out


def _check_shapes(params, cfg: ModelConfig):
  want = LM(cfg).abstract_params()
  got_struct, want_struct = jax.tree.structure(params), jax.tree.structure(want)
  if got_struct != want_struct:
    raise AssertionError(f"pruned params do not match {cfg}: {got_struct} vs {want_struct}")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    if tuple(a.shape) != tuple(b.shape):
      raise AssertionError(f"pruned leaf shape {a.shape} != expected {b.shape}")


def prune(lm: LM, params, target: ModelConfig, batches=(), *, method: str = "activation",
          seed: int = 0, rescale_norms: bool = False):
  """(pruned params as numpy, Plan, Importance or None) for `target` (see `target_config`)."""
  # Calibration statistics whenever batches are given: the random control then differs from
  # the ranked cut only in which units it keeps, not in the norm gains.
  imp = importance(lm, params, batches) if len(batches) else None
  p = plan(imp, lm.cfg, target, method=method, seed=seed)
  gains = norm_gains(imp.norm_sq, p.channels) if imp is not None and rescale_norms else None
  return apply_plan(params, lm.cfg, target, p, gains), p, imp
