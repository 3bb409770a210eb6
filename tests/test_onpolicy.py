"""On-policy distillation: the loss sees only sampled positions and equals a NumPy reverse KL;
the step decision is deterministic; a resumed run draws the same samples and ends identical."""
import dataclasses
import functools

import jax
import numpy as np
import pytest

from distill.run import settings
from distill import data
from distill.methods import onpolicy
from distill.inference import sampling
from distill.models import sharding
from distill.data import tokenizer as tokenizers
from distill.train import loop as train
from distill.train import objectives
from distill.train import step as step_lib
from distill.models.transformer import LM
from tests.helpers import Interrupt, KillAfter, shrunken_config, tiny_model_config


def _models():
  teacher = LM(tiny_model_config(vocab_size=264, d_model=32))
  student = LM(tiny_model_config(vocab_size=264, d_model=16, n_layers=1))
  return teacher, student, teacher.init(jax.random.key(1)), student.init(jax.random.key(2))


def _cfg(fraction=1.0, p=4, g=6, divergence="reverse_kl", start_step=0):
  return onpolicy.OnPolicyConfig(fraction=fraction, prompt_len=p, divergence=divergence,
                                 start_step=start_step,
                                 sample=sampling.SampleConfig(gen_len=g, temperature=1.0,
                                                              vocab=260))


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_is_reverse_kl_on_generated_positions_only():
  teacher, student, tp, sp = _models()
  cfg = _cfg()
  tokens = np.random.default_rng(0).integers(3, 200, size=(4, 11)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((4, 10), np.float32)}
  new, stats = onpolicy.sampled_batch(student, sp, batch, jax.random.key(0), cfg)
  new = jax.device_get(new)
  np.testing.assert_array_equal(new["inputs"][:, :4], tokens[:, :4])  # the prompts
  np.testing.assert_array_equal(new["mask"], np.concatenate([np.zeros((4, 3)), np.ones((4, 6))], 1))
  assert float(stats["sample_len"]) == 6.0
  plan = onpolicy.make_plan(cfg, student, teacher, objectives.LossConfig(kind="forward_kl",
                                                                    temperature=2.0, alpha=0.5), 0)
  loss, metrics = plan.on_loss_fn(sp, new, tp, 0)
  # NumPy reference: mean over sampled positions of KL(Q || P) at T = 2, times T^2, no CE.
  q = _log_softmax(np.asarray(student.apply(sp, new["inputs"]), np.float64) / 2)
  pt = _log_softmax(np.asarray(teacher.apply(tp, new["inputs"]), np.float64) / 2)
  kl = (np.exp(q) * (q - pt)).sum(-1)
  want = 4.0 * kl[:, 3:].mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  # Logged beside it: -log p_teacher (T = 1) of the sampled tokens, the on-policy quantity.
  lp1 = _log_softmax(np.asarray(teacher.apply(tp, new["inputs"]), np.float64))
  nll = -np.take_along_axis(lp1, new["targets"][..., None], -1)[..., 0][:, 3:].mean()
  np.testing.assert_allclose(float(metrics["teacher_nll"]), nll, rtol=1e-4)


def test_loss_temperature_overrides_the_dataset_steps_temperature():
  """`on_policy.loss_temperature` = 1 with distill.temperature = 2: the sampled steps' reverse KL
  is taken at T = 1 (NumPy), while the dataset steps keep T = 2."""
  teacher, student, tp, sp = _models()
  tokens = np.random.default_rng(2).integers(3, 200, size=(3, 9)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((3, 8), np.float32)}
  loss_cfg = objectives.LossConfig(kind="forward_kl", temperature=2.0, alpha=0.5)
  cfg = onpolicy.OnPolicyConfig(**{**_cfg().__dict__, "loss_temperature": 1.0})
  loss, metrics = onpolicy.make_plan(cfg, student, teacher, loss_cfg, 0).on_loss_fn(sp, batch, tp, 0)
  q = _log_softmax(np.asarray(student.apply(sp, batch["inputs"]), np.float64))
  pt = _log_softmax(np.asarray(teacher.apply(tp, batch["inputs"]), np.float64))
  np.testing.assert_allclose(float(loss), (np.exp(q) * (q - pt)).sum(-1).mean(), rtol=1e-4)
  assert float(metrics["temperature"]) == 1.0 and loss_cfg.temperature == 2.0


def test_on_step_update_is_sgd_on_reverse_kl_of_the_fixed_samples():
  """One jitted on-policy step with plain SGD moves the params by -lr * the gradient of a
  reverse KL written from its definition on the step's samples held fixed: no gradient
  through the sampling, the right direction, T and T^2, the mask and its normalisation."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  teacher, student, tp, sp = _models()
  cfg, t, lr = _cfg(p=3, g=7), 2.0, 0.1
  tokens = np.random.default_rng(4).integers(3, 200, size=(4, 11)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((4, 10), np.float32)}
  plan = onpolicy.make_plan(cfg, student, teacher, objectives.LossConfig(temperature=t, alpha=0.5), 0)
  tx = optax.sgd(lr)
  rng = jax.random.key(9)
  state, _ = jax.jit(plan.steps(None, tx, False)[True])(
      step_lib.TrainState(jnp.int32(0), sp, tx.init(sp)), batch, rng, tp)
  new = jax.device_get(onpolicy.sampled_batch(student, sp, batch, jax.random.fold_in(rng, 1),
                                              cfg)[0])

  def ref(params):
    lq = jax.nn.log_softmax(student.apply(params, new["inputs"]) / t)
    lp = jax.nn.log_softmax(teacher.apply(tp, new["inputs"]) / t)
    kl = jnp.sum(jnp.exp(lq) * (lq - lp), -1)
    return t * t * jnp.sum(kl * new["mask"]) / jnp.sum(new["mask"])

  want = jax.tree.map(lambda a, g: a - lr * g, sp, jax.grad(ref)(sp))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
               state.params, want)


def test_step_decision_is_deterministic_and_near_lambda():
  key = jax.random.key(7)
  picks = [onpolicy.use_on_policy(key, s, 0.5) for s in range(400)]
  assert picks == [onpolicy.use_on_policy(key, s, 0.5) for s in range(400)]
  assert 0.42 < np.mean(picks) < 0.58
  assert not any(onpolicy.use_on_policy(key, s, 0.0) for s in range(20))
  assert all(onpolicy.use_on_policy(key, s, 1.0) for s in range(20))


def test_warm_start_no_on_policy_step_before_start():
  key = jax.random.key(7)
  # Before start_step never; from it on the same draws as without a warm start.
  assert not any(onpolicy.use_on_policy(key, s, 1.0, start_step=100) for s in range(100))
  assert all(onpolicy.use_on_policy(key, s, 0.5, start_step=100)
             == onpolicy.use_on_policy(key, s, 0.5) for s in range(100, 400))
  c = shrunken_config(**{"distill.on_policy.fraction": 0.5, "distill.on_policy.start": 0.5})
  cfg = settings.on_policy_config(c.distill.on_policy, seq_len=32, vocab=260,
                                   eos_id=None, pad_id=0, steps=250)
  assert cfg.start_step == 125  # round(0.5 * 250)
  plan = onpolicy.make_plan(cfg, None, None, objectives.LossConfig(), seed=0)
  assert not any(plan.use(s) for s in range(125)) and any(plan.use(s) for s in range(125, 250))
  c.distill.on_policy.start = 0.0  # the default: today's behaviour
  assert settings.on_policy_config(c.distill.on_policy, seq_len=32, vocab=260,
                                    eos_id=None, pad_id=0, steps=250).start_step == 0



def _stage(workdir, stage_dir, kill_after=None, steps=6, fraction=0.5, start_step=0):
  c = shrunken_config()
  teacher, student, tp, _ = _models()
  it = data.make_train_iterator(settings.data_spec(c.data), tokenizers.ByteTokenizer(), workdir, batch_size=4,
                                seed=3, fraction=0.5)
  if kill_after is not None:
    it = KillAfter(it, kill_after)
  mesh = sharding.make_mesh(sharding.MeshSpec(data=-1, fsdp=1, tensor=1), devices=jax.devices()[:2])
  loss_cfg = objectives.LossConfig(kind="forward_kl", temperature=1.0)
  plan = onpolicy.make_plan(_cfg(fraction=fraction, p=8, g=8, start_step=start_step), student,
                            teacher, loss_cfg, seed=3)
  loss_fn = functools.partial(objectives.distill_loss, student=student, teacher=teacher, cfg=loss_cfg)
  return train.run(name="s", lm=student, mesh=mesh, stage_dir=stage_dir, data_iter=it,
                   steps=steps, loss_fn=loss_fn,
                   tx=step_lib.make_optimizer(lr=1e-2, steps=steps, warmup=1), seed=3,
                   checkpoint_every=2, log_every=1, teacher_params=tp,
                   teacher_shardings=sharding.param_shardings(teacher, mesh), on_policy=plan)


@pytest.mark.slow  # a training run: keeps the default suite in budget
def test_resumed_run_draws_the_same_samples(tmp_path):
  workdir = str(tmp_path)
  data.prepare(settings.data_spec(shrunken_config().data), workdir)
  ref = _stage(workdir, str(tmp_path / "ref"))
  kinds = [m["on_policy"] for _, m in ref.history]
  assert 0 < sum(kinds) < 6, kinds  # both kinds of step in 6 steps at λ = 0.5 (seed 3)
  with pytest.raises(Interrupt):
    _stage(workdir, str(tmp_path / "cut"), kill_after=3)
  resumed = _stage(workdir, str(tmp_path / "cut"))
  assert resumed.resumed_from == 2
  for (s, a), (_, b) in zip(resumed.history, ref.history):
    assert a["on_policy"] == b["on_policy"] and a["sample_checksum"] == b["sample_checksum"], s
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               resumed.params, ref.params)


def test_warm_started_run_takes_no_on_policy_step_before_start(tmp_path):
  workdir = str(tmp_path)
  data.prepare(settings.data_spec(shrunken_config().data), workdir)
  run = _stage(workdir, str(tmp_path / "warm"), steps=4, fraction=1.0, start_step=2)
  assert [m["on_policy"] for _, m in run.history] == [0.0, 0.0, 1.0, 1.0]
  assert [m["sample_len"] > 0 for _, m in run.history] == [False, False, True, True]


def _numpy_sample_nll(teacher, tp, toks, p):
  """Mean -log p_teacher (NumPy, float64) of the tokens after the first `p` of each row."""
  logp = _log_softmax(np.asarray(teacher.apply(tp, toks[:, :-1]), np.float64))
  return (-np.take_along_axis(logp, toks[:, 1:, None], -1)[..., 0][:, p - 1:]).mean()


def test_sample_metrics_match_a_numpy_teacher_nll():
  teacher, student, tp, sp = _models()
  prompts = np.random.default_rng(1).integers(3, 200, size=(5, 4)).astype(np.int32)
  cfg = sampling.SampleConfig(gen_len=6, temperature=1.0, vocab=260)
  m = onpolicy.sample_metrics(student, sp, teacher, tp, prompts, jax.random.key(0), cfg, batch=2)
  out = jax.device_get(sampling.run(student, sp, prompts, jax.random.key(0), cfg))
  toks = out["tokens"]
  np.testing.assert_allclose(m["sample_teacher_nll"], _numpy_sample_nll(teacher, tp, toks, 4),
                             rtol=1e-4)
  assert m["sample_len_mean"] == 6 and m["sample_eos_rate"] == 0.0


def test_sample_metrics_draw_several_continuations_per_prompt():
  """`draws=3`: each prompt continued three times with different keys, all scored."""
  teacher, student, tp, sp = _models()
  prompts = np.random.default_rng(1).integers(3, 200, size=(2, 4)).astype(np.int32)
  cfg = sampling.SampleConfig(gen_len=6, temperature=1.0, vocab=260)
  m = onpolicy.sample_metrics(student, sp, teacher, tp, prompts, jax.random.key(0), cfg,
                              batch=4, draws=3)
  toks = jax.device_get(sampling.run(student, sp, np.repeat(prompts, 3, axis=0),
                                     jax.random.key(0), cfg)["tokens"])
  for i in range(2):  # same prompt, three different continuations
    group = toks[3 * i:3 * i + 3]
    assert (group[:, :4] == prompts[i]).all()
    assert len({tuple(r[4:]) for r in group}) == 3
  np.testing.assert_allclose(m["sample_teacher_nll"], _numpy_sample_nll(teacher, tp, toks, 4),
                             rtol=1e-4)


def _trimmed(teacher):
  """The teacher seen through a trimmed vocabulary: even ids kept, padded to a multiple of 8."""
  from distill.methods.prune import vocab_teacher as trimmed, vocab as vocab_lib  # pylint: disable=import-outside-toplevel
  kept = np.arange(0, 262, 2, dtype=np.int32)  # 131 ids -> 136 rows
  rows = np.concatenate([kept, np.zeros(136 - kept.size, np.int32)])
  tr = vocab_lib.Trim(kept=kept, rows=rows, tokenizer=None, teacher_vocab=264)
  return trimmed.TrimmedTeacher(teacher, tr), kept


def test_sampled_steps_use_the_full_teacher_distribution_through_a_trim():
  """A trimmed-vocabulary student (`student.vocab`) trains on-policy with `teacher_source=cache`:
  the sampled steps run the teacher online through `TrimmedTeacher`. Since the teacher runs
  there, the divergence takes its whole distribution, even when the dataset steps use top-k
  targets: the loss equals NumPy's reverse KL against the full teacher's log-softmax at the
  kept ids (renormalized over them), not the top-k + tail one; the sample NLL is exactly
  -log p_teacher of each sampled token over the full vocabulary."""
  teacher, _, tp, _ = _models()
  t_trim, kept = _trimmed(teacher)
  student = LM(tiny_model_config(vocab_size=136, d_model=16, n_layers=1))
  sp = student.init(jax.random.key(2))
  cfg = onpolicy.OnPolicyConfig(fraction=1.0, prompt_len=4, divergence="reverse_kl",
                                sample=sampling.SampleConfig(gen_len=6, temperature=1.0,
                                                             vocab=kept.size))
  tokens = np.random.default_rng(0).integers(3, 120, size=(4, 11)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((4, 10), np.float32)}
  new = jax.device_get(onpolicy.sampled_batch(student, sp, batch, jax.random.key(0), cfg)[0])
  assert new["inputs"].max() < kept.size  # the student samples its own ids only
  loss_cfg = objectives.LossConfig(kind="forward_kl", temperature=1.0, top_k=8, tail="tail_bucket")
  loss, _ = onpolicy.make_plan(cfg, student, t_trim, loss_cfg, 0).on_loss_fn(sp, new, tp, 0)
  full = _log_softmax(np.asarray(teacher.apply(tp, kept[new["inputs"]]), np.float64))
  rows = np.concatenate([full[..., kept], np.full(full.shape[:-1] + (5,), -1e4)], -1)
  p = _log_softmax(rows)  # renormalized over the kept ids; padding rows ~ 0
  q = _log_softmax(np.asarray(student.apply(sp, new["inputs"]), np.float64))
  m = new["mask"]
  want = ((np.exp(q) * (q - p)).sum(-1) * m).sum() / m.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  # ... which is not what the top-k + tail targets of the dataset steps would give.
  at_kept = full[..., kept]
  ids = np.argsort(-at_kept, -1, kind="stable")[..., :8]
  cached = dict(new, teacher_ids=ids.astype(np.int32),
                teacher_logprobs=np.take_along_axis(at_kept, ids, -1).astype(np.float32))
  sparse_cfg = dataclasses.replace(loss_cfg, kind="reverse_kl")
  sparse, _ = objectives.cached_distill_loss(sp, cached, None, 0, student=student, cfg=sparse_cfg)
  assert abs(float(sparse) - want) > 0.05 * want
  # Sample metrics through the trimmed teacher: -log p_teacher(kept[token]), full vocabulary.
  prompts = tokens[:, :4]
  m = onpolicy.sample_metrics(student, sp, t_trim, tp, prompts, jax.random.key(3), cfg.sample)
  out = jax.device_get(sampling.run(student, sp, prompts, jax.random.key(3), cfg.sample))
  toks = out["tokens"]
  lp = _log_softmax(np.asarray(teacher.apply(tp, kept[toks[:, :-1]]), np.float64))
  nll = -np.take_along_axis(lp, kept[toks[:, 1:]][..., None], -1)[..., 0][:, 3:]
  np.testing.assert_allclose(m["sample_teacher_nll"], nll.mean(), rtol=1e-4)
