"""Where the run config stops: its sections become the small frozen values the library takes.

`distill.run.validate` has checked every field (one clear line per mistake) before these run;
below `distill.run` nothing reads a ConfigDict or keeps a default for one of its fields.
"""
from __future__ import annotations

import dataclasses
import json

from distill.data import DataSpec, tasks
from distill.eval import task as task_metrics
from distill.inference import sampling
from distill.methods import ensemble, features
from distill.models import quant as qat
from distill.methods.onpolicy import OnPolicyConfig
from distill.models.sharding import MeshSpec
from distill.run import hardware, precision as precision_lib
from distill.train.objectives import LossConfig


def data_spec(d) -> DataSpec:
  """`config.data` -> DataSpec."""
  return DataSpec(name=d.name.strip(), data_dir=d.data_dir, tokenizer=d.tokenizer,
                  seq_len=int(d.seq_len), add_bos=add_bos(d),
                  max_documents=None if d.max_documents is None else int(d.max_documents),
                  dev_fraction=float(d.dev_fraction),
                  columns=tuple((k, str(v)) for k, v in sorted(d.columns.items()) if v),
                  validation_name=d.validation_name.strip())


def gguf_quants(export) -> tuple[str, ...]:
  """config.export.gguf ("f16,q8_0"; absent in older configs) as a tuple of quant names."""
  return tuple(q.strip() for q in str(export.get("gguf", "") or "").split(",") if q.strip())


def gate_threshold(p) -> float | None:
  """`config.export.<preset>` -> the agreement its export gates need; None (min_agreement 0)
  = each quantization mode's own threshold (distill.export.verify.AGREEMENT_THRESHOLD)."""
  return float(p.min_agreement) or None


def add_bos(d) -> bool | None:
  """`config.data.add_bos` -> True / False, or None for "auto" (the tokenizer's convention)."""
  value = str(d.add_bos).lower()
  return None if value == "auto" else value == "true"


def mesh_spec(m) -> MeshSpec:
  """`config.mesh` -> MeshSpec."""
  return MeshSpec(data=int(m.data), fsdp=int(m.fsdp), tensor=int(m.tensor),
                  slices=int(m.slices))


def preset(config) -> hardware.Hardware:
  return hardware.get(config.preset)


def precision(config) -> precision_lib.Precision:
  """The run's precision policy: `compute_dtype` and `teacher.dtype` ('' = the preset's,
  'auto' = this machine's) resolved to dtype names; every model the run builds reads these."""
  return precision_lib.resolve(preset(config), config.compute_dtype, config.teacher.dtype)


def loss_config(d) -> LossConfig:
  """`config.distill` -> the static description of the soft-target objective."""
  if d.qat not in qat.QAT_MODES:
    raise ValueError(f"--config.distill.qat={d.qat!r}: use one of {', '.join(qat.QAT_MODES)}")
  return LossConfig(kind=d.loss, temperature=float(d.temperature), alpha=float(d.alpha),
                    beta=float(d.beta), skew=float(d.skew), scale_by_t2=bool(d.scale_by_t2),
                    chunk_size=int(d.chunk_size), alpha_schedule=d.alpha_schedule,
                    alpha_end=float(d.alpha_end), temperature_schedule=d.temperature_schedule,
                    temperature_end=float(d.temperature_end), total_steps=int(d.steps),
                    top_k=int(d.top_k), tail=d.tail, uld_weight=float(d.uld_weight), qat=d.qat,
                    qat_start_step=int(round(float(d.qat_start_fraction) * int(d.steps))),
                    qat_activations=bool(d.qat_activations))


def feature_spec(h) -> features.FeatureSpec:
  """`config.distill.hidden` -> FeatureSpec."""
  return features.FeatureSpec(layers=h.layers, weight=float(h.weight), kind=h.kind,
                              attention_weight=float(h.attention_weight))


def on_policy_config(o, *, steps: int, seq_len: int, vocab: int, eos_id, pad_id,
                     example_prompts: tuple[int, int] | None = None) -> OnPolicyConfig:
  """`config.distill.on_policy` -> OnPolicyConfig; gen_len 0 fills the training window and
  `start` is a fraction of the `steps` distill steps. example_prompts: (shortest, longest)
  prompt of a table's training examples, which then replace the first prompt_len tokens (the
  prompt buffer is the longest)."""
  p = int(o.prompt_len) if example_prompts is None else int(example_prompts[1])
  gen = int(o.gen_len) or seq_len + 1 - p
  return OnPolicyConfig(fraction=float(o.fraction), prompt_len=p, divergence=o.divergence,
                        example_prompts=example_prompts is not None,
                        prefill=0 if example_prompts is None else int(example_prompts[0]),
                        start_step=int(round(float(o.start) * steps)),
                        loss_temperature=float(o.loss_temperature),
                        sample=sampling.SampleConfig(
                            gen_len=gen, temperature=float(o.temperature), top_k=int(o.top_k),
                            top_p=float(o.top_p), eos_id=-1 if eos_id is None else eos_id,
                            pad_id=pad_id or 0, vocab=vocab))


def task_data(t) -> tasks.TaskData:
  """`config.data.task` -> TaskData (the built-in task's rows)."""
  return tasks.TaskData(train=int(t.train), dev=int(t.dev), test=int(t.test),
                        min_digits=int(t.min_digits), max_digits=int(t.max_digits),
                        seed=int(t.seed), reverse=bool(t.reverse), pad=bool(t.pad))


def task_spec(e) -> task_metrics.TaskSpec | None:
  """`config.eval.task` -> TaskSpec, or None when `kind` is '' (no task metric)."""
  if not e.kind:
    return None
  return task_metrics.TaskSpec(kind=e.kind, regex=e.regex, verifier=e.verifier,
                               gen_len=int(e.gen_len), max_prompts=int(e.max_prompts),
                               pass_k=int(e.pass_k), samples=int(e.samples),
                               temperature=float(e.temperature))


def task_split(config) -> str:
  """Where the task metric's prompts come from: 'validation', 'test' or a table name."""
  return config.eval.task.split or ("test" if tasks.is_task(config.data.name) else "validation")


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """One member of `config.teachers`: pretrained here with `seed`, or loaded from
  `checkpoint`; `name` is its stage directory (pretrained) and its report row."""
  name: str
  weight: float
  seed: int | None = None
  checkpoint: str = ""


def teachers(config) -> tuple[TeacherSpec, ...]:
  """`config.teachers` (absent in older configs = ()) -> TeacherSpecs, in order."""
  out = []
  for i, entry in enumerate(tuple(config.get("teachers", ()) or ())):
    e = dict(entry)
    ckpt = str(e.get("checkpoint", "") or "")
    seed = None if ckpt else int(e["seed"])
    out.append(TeacherSpec(name=f"teacher_{i}" if ckpt else f"teacher_seed{seed}",
                           weight=float(e.get("weight", 1.0)), seed=seed, checkpoint=ckpt))
  return tuple(out)


def teacher_source(config) -> str:
  """Where the soft targets come from, as the teacher cache and the evaluation cache record
  (and check) it: the single teacher's checkpoint or "pretrained", or the ensemble."""
  specs = teachers(config)
  if specs:
    return ensemble.SOURCE_PREFIX + json.dumps([[t.seed, t.checkpoint, t.weight] for t in specs])
  return config.teacher.checkpoint or "pretrained"
