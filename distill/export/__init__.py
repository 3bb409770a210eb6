"""Edge export: JAX student -> jax2tf -> SavedModel -> TFLite (LiteRT) + model card.

  python -m distill.export --workdir=runs/tiny --preset=watch [--quant=int8] [--stage=student]

writes `<workdir>/export/<preset>/` (or `<preset>-<quant>` when --quant differs from the
preset's default) holding `student-<quant>.tflite`, `model_card.json` and the tokenizer files.
The pipeline runs the same code as its last stage (`distill.run.export_stage`).

Modules: presets (budgets, BudgetError), signatures (names), converter (jax2tf + TFLite converter), quantize
(calibration data, int4), runtime (LiteRT driver from the card), verify (parity vs JAX),
card (the JSON), artifact (one export, published atomically).

TensorFlow is imported only inside this package (`quiet_tf`), never by training.
"""
import json
import os

from distill.errors import BudgetError
from distill.export.presets import PRESETS, QUANT_MODES, Preset, resolve

__all__ = ["PRESETS", "QUANT_MODES", "BudgetError", "Preset", "resolve", "export_stage"]


def export_stage(stage_dir: str, preset: str, out_dir: str | None = None, **kw) -> dict:
  """Exports a finished stage directory for a preset; returns the model card.

  Keyword arguments: quant, max_context, prefill_len, budget_mb (preset overrides), and those
  of `artifact.export` (data_cfg, workdir, level, num_threads, keep_saved_model, log).
  """

  # Lazy: `distill.export.presets` (budgets, BudgetError) stays importable without the model,
  # jax2tf and the LiteRT runtime that an export pulls in.
  from distill.export import artifact  # noqa: PLC0415
  # Lazy for the same reason: loading the stage pulls in the model.
  from distill.inference import model as inference  # noqa: PLC0415
  over = {k: kw.pop(k) for k in ("quant", "max_context", "prefill_len", "budget_mb") if k in kw}
  p = resolve(preset, **over)
  model = inference.load(stage_dir)
  if out_dir is None:
    workdir = os.path.dirname(os.path.abspath(stage_dir))
    out_dir = os.path.join(workdir, "export", default_dirname(p))
  info_path = os.path.join(stage_dir, "stage.json")
  with open(info_path) as f:
    info = json.load(f)
  source = {"stage_dir": os.path.abspath(stage_dir), "stage": info}
  return artifact.export(model.lm, model.params, model.tokenizer, p, out_dir,
                         tokenizer_dir=os.path.join(stage_dir, "tokenizer"), source=source, **kw)


def default_dirname(p: Preset) -> str:
  return p.name if p.quant == PRESETS[p.name].quant else f"{p.name}-{p.quant}"
