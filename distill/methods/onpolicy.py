"""On-policy distillation (GKD, Agarwal et al., ICLR 2024) inside the distill stage.

With `distill.on_policy.fraction = λ`, each step is decided on the host, deterministically from
`fold_in(key, step)`: with probability λ the step is *on-policy* and the student continues
the first `prompt_len` tokens of each row of the dataset batch (of a table of examples: each
example's own prompt, `OnPolicyConfig.example_prompts`) with its own samples (current
parameters, the jitted KV-cache sampler of `distill.inference.sampling`, no host round-trip per token);
the teacher scores those sequences in the same jitted step (online teacher) and the student
minimises `on_policy.divergence` (reverse KL or JSD(β) as GKD recommends; any kind of the loss
library) on the generated positions only. Otherwise the step is the ordinary off-policy one.

Both steps read one dataset batch, so the data order, checkpoints and resume points are the
off-policy run's; the sampling key is the step's key `fold_in(rng, step)`, so a resumed run
draws the same sequences.

Shape letters: B batch, P prompt, G generated, L = P + G.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from distill import data
from distill.train import objectives
from distill.inference import sampling
from distill.train import step as step_lib
from distill.models.transformer import LM


@dataclasses.dataclass(frozen=True)
class OnPolicyConfig:
  fraction: float  # λ: share of steps whose continuations the student samples
  prompt_len: int
  sample: sampling.SampleConfig  # gen_len, temperature, top-k/p, EOS
  divergence: str
  # Warm start (GKD starts from a supervised student): steps before this one are all
  # off-policy; from it on, each step is on-policy with probability λ.
  start_step: int = 0
  # Temperature of the divergence on sampled positions; 0 = the dataset steps' schedule.
  loss_temperature: float = 0.0
  # Table examples: each row's prompt is its own (the tokens before its first trained one, at
  # most prompt_len, the prompt buffer), answered from there; `prefill` (static, <= every
  # row's prompt length) positions are prefilled at once. Windows: the first prompt_len tokens.
  example_prompts: bool = False
  prefill: int = 0


def use_on_policy(key, step: int, fraction: float, start_step: int = 0) -> bool:
  """Whether `step` is on-policy: step >= start_step and u(fold_in(key, step)) < λ; exact at
  λ = 0 and 1. A function of (key, step) only, so a resumed run decides as the original."""
  if fraction <= 0.0 or step < start_step:
    return False
  if fraction >= 1.0:
    return True
  return bool(jax.random.uniform(jax.random.fold_in(key, step)) < fraction)


def sampled_batch(student: LM, params, batch, key, cfg: OnPolicyConfig):
  """The student's continuations of the batch's prompts, as a training batch.

  inputs/targets are the sampled sequence shifted by one; the mask is 1 where the target is a
  sampled token (up to and including EOS), so the loss sees generated positions only.
  """
  prompts = batch["inputs"][:, :cfg.prompt_len]
  lens = None
  if cfg.example_prompts:
    lens = jnp.minimum(data.prompt_lengths(batch["mask"]), cfg.prompt_len).astype(jnp.int32)
  # Row ids are global batch rows: the same draws whatever the mesh.
  out = sampling.sample(student, jax.lax.stop_gradient(params), prompts, key, cfg.sample,
                        prompt_lens=lens, prefill=cfg.prefill or None)
  tokens, gen = out["tokens"], out["gen_mask"]
  new = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": gen[:, 1:]}
  # Positions weighted by 1..L so a reordering would change it too: a cheap fingerprint of the
  # samples, logged so tests (and users) can check a resumed run drew the same sequences.
  weights = jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.float32)
  checksum = jnp.sum(tokens.astype(jnp.float32) * gen * weights) / tokens.shape[0]
  stats = {"on_policy": jnp.float32(1.0), "sample_len": out["lengths"].astype(jnp.float32).mean(),
           "sample_checksum": checksum}
  return new, stats


def _zero_stats():
  return {"on_policy": jnp.float32(0.0), "sample_len": jnp.float32(0.0),
          "sample_checksum": jnp.float32(0.0)}


def on_step(state, batch, rng, teacher_params, *, student: LM, loss_fn, tx, cfg: OnPolicyConfig,
            skip_nonfinite: bool = False):
  """Sample with the current student, teacher-score, update: one jitted program."""
  params = objectives.split_features(state.params)[0]
  new, stats = sampled_batch(student, params, batch, jax.random.fold_in(rng, 1), cfg)
  state, metrics = step_lib.train_step(state, new, rng, teacher_params, loss_fn=loss_fn, tx=tx,
                                       skip_nonfinite=skip_nonfinite)
  return state, dict(metrics, **stats)


def off_step(state, batch, rng, teacher_params, *, loss_fn, tx, skip_nonfinite: bool = False):
  """The ordinary step, with the on-policy metrics at 0 so every history row has one schema."""
  state, metrics = step_lib.train_step(state, batch, rng, teacher_params, loss_fn=loss_fn, tx=tx,
                                       skip_nonfinite=skip_nonfinite)
  return state, dict(metrics, **_zero_stats())


@dataclasses.dataclass
class Plan:
  """What `train.run` needs to interleave the two steps: their builders and the decision."""
  cfg: OnPolicyConfig
  student: LM
  on_loss_fn: object
  key: jax.Array

  def steps(self, loss_fn, tx, skip_nonfinite):
    """{False: off-policy step, True: on-policy step}, both pure (jitted by train.run)."""
    return {False: functools.partial(off_step, loss_fn=loss_fn, tx=tx,
                                     skip_nonfinite=skip_nonfinite),
            True: functools.partial(on_step, student=self.student, loss_fn=self.on_loss_fn, tx=tx,
                                    cfg=self.cfg, skip_nonfinite=skip_nonfinite)}

  def use(self, step: int) -> bool:
    return use_on_policy(self.key, step, self.cfg.fraction, self.cfg.start_step)


def make_plan(on_cfg: OnPolicyConfig, student: LM, teacher: LM, loss_cfg: objectives.LossConfig,
              seed: int) -> Plan:
  """The on-policy loss is the distill objective with `divergence` and no hard-label term
  (CE on the student's own samples would only reinforce them)."""
  # The teacher runs inside the sampled step, so its whole distribution is there: top_k = 0.
  # A top-k + tail target would let reverse KL (mode-seeking on the *student's* mass) spread
  # the tail bucket's share over tokens the teacher ranks anywhere below its top k, which the
  # student then samples; the sparse targets exist only to store a teacher offline.
  on_loss = dataclasses.replace(loss_cfg, kind=on_cfg.divergence, alpha=0.0, alpha_end=0.0,
                                alpha_schedule="constant", top_k=0,
                                # a trimmed teacher has log-probs, not an unembedding to chunk
                                chunk_size=0 if getattr(teacher, "normalized", False)
                                else loss_cfg.chunk_size)
  if on_cfg.loss_temperature:
    on_loss = dataclasses.replace(on_loss, temperature=on_cfg.loss_temperature,
                                  temperature_end=on_cfg.loss_temperature,
                                  temperature_schedule="constant")
  loss_fn = functools.partial(objectives.distill_loss, student=student, teacher=teacher,
                              cfg=on_loss)
  # The decision stream is its own (seed, "on-policy") key, independent of the step keys.
  key = jax.random.fold_in(jax.random.key(seed), 0x6B44)
  return Plan(on_cfg, student, loss_fn, key)


# ---------------------------------------------------------------------------------------------
# Sample metrics for the report: the same prompts, settings and key for every model.


def _teacher_nll_sums(t_params, tokens, gen_mask, *, teacher: LM):
  """(sum of -log p_teacher(token) over sampled positions, count)."""
  logp = teacher.apply(t_params, tokens[:, :-1]).astype(jnp.float32)
  if not getattr(teacher, "normalized", False):  # a trimmed teacher's rows are log-probs already
    logp = jax.nn.log_softmax(logp, -1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
  m = gen_mask[:, 1:]
  return jnp.sum(nll * m), jnp.sum(m)


@functools.lru_cache(maxsize=8)
def teacher_nll_fn(teacher: LM):
  """Jitted (t_params, tokens, gen_mask) -> (sum of the teacher's NLL over gen_mask, count)."""
  return jax.jit(functools.partial(_teacher_nll_sums, teacher=teacher))


def sample_metrics(lm: LM, params, teacher: LM, t_params, prompts, key,
                   cfg: sampling.SampleConfig, mesh=None, batch: int = 32,
                   draws: int = 1) -> dict:
  """Teacher-scored NLL (nats/token) of `lm`'s samples from `prompts` [N, P], the fraction of
  repeated 4-grams in them, and their length statistics; `draws` continuations per prompt."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  # Each prompt `draws` times in a row: the sampler keys rows by position, so each draw differs.
  prompts = np.repeat(np.asarray(prompts), draws, axis=0)
  nll = count = 0.0
  toks, masks = [], []
  for start in range(0, len(prompts), batch):
    rows = np.asarray(prompts[start:start + batch], np.int32)
    out = sampling.run(lm, params, rows, key, cfg, mesh=mesh,
                       row_ids=np.arange(start, start + len(rows)))
    s, n = teacher_nll_fn(teacher)(t_params, out["tokens"], out["gen_mask"])
    nll, count = nll + float(s), count + float(n)
    toks.append(np.asarray(out["tokens"]))
    masks.append(np.asarray(out["gen_mask"]))
  tokens, mask = np.concatenate(toks), np.concatenate(masks)
  lengths = mask.sum(-1)
  return {"sample_teacher_nll": nll / max(count, 1.0),
          "sample_repeat_rate": sampling.repeat_rate(tokens, mask),
          "sample_len_mean": float(lengths.mean()), "sample_len_min": int(lengths.min()),
          "sample_len_max": int(lengths.max()),
          "sample_eos_rate": float((lengths < cfg.gen_len).mean())}
