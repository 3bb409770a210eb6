"""The pipeline's last stage: export the distilled student for each preset in config.export.

Writes `<workdir>/export/<preset>/` per preset with the "quick" verification (2 prompts x 16
greedy tokens, 4 validation windows; the card records exactly what was measured) so the
tiny pipeline stays fast; `python -m distill.export` runs the full check.

Config fields (stated with their meaning in configs/base.py):
  config.export.verify            "quick" | "full" | "none"
  config.export.<preset>.quant / .max_context / .prefill_len / .budget_mb   ('' / 0 = preset's)
  config.export.litertlm          "auto" | "true" | "false"
      also write <preset>/student.litertlm for LiteRT-LM; "auto" does so when
      litert-lm-builder and litert-lm-api are installed (requirements-edge.txt) and logs one
      line otherwise, True requires them (exit 2 without them).

  config.export.<preset>.min_agreement   0 = each mode's threshold (verify.AGREEMENT_THRESHOLD)
  config.export.gguf              "" | "f16" | "f16,q8_0" | ...  GGUF files for llama.cpp,
      <preset>-gguf/student-<quant>.gguf per preset (`run_gguf`), redone only when the student
      stage is newer than the file

Like the other stages it is skipped when its output exists: a preset folder whose card was
made from the same student stage with the same settings, and passed its gates, is reused. A
preset whose gate fails keeps its file (the card marked failed, with the figures), the other
presets still export, and `run` reports the failure in its summary ("error"); the pipeline
raises it once the report is written. A failed export is redone on the next run, so re-running
with another quant or min_agreement re-exports without retraining.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import jax

from distill.export import artifact, gguf_writer, presets
from distill.export.verify import VerificationError
from distill.run import settings
from distill.export.runtime import CARD_NAME

_OVERRIDES = ("quant", "max_context", "prefill_len", "budget_mb")


def _want_litertlm(value) -> bool:
  # A string field, so that the CLI can say 'auto' as well as True/False (checked by
  # distill.config.validate).
  if str(value).lower() != "auto":
    return str(value).lower() == "true"
  import importlib.util  # pylint: disable=import-outside-toplevel
  have = all(importlib.util.find_spec(m) for m in ("litert_lm_builder", "litert_lm"))
  if not have:
    logging.info("[export] litert-lm-builder / litert-lm-api not installed: no .litertlm "
                 "(pip install -r requirements-edge.txt)")
  return have


def _key(preset: presets.Preset, student_dir: str, level: str, litertlm: bool = False,
         threshold: float | None = None) -> str:
  info = ""
  path = os.path.join(student_dir, "stage.json")
  if os.path.exists(path):
    with open(path) as f:
      info = f.read()
  raw = {"preset": preset.__dict__, "stage": info, "level": level}
  if litertlm:  # only then, so exports made before the bundle existed stay reusable
    raw["litertlm"] = True
  if threshold is not None:  # likewise: the mode's own threshold keeps the old keys
    raw["min_agreement"] = threshold
  raw = json.dumps(raw, sort_keys=True)
  return hashlib.md5(raw.encode()).hexdigest()[:16]


def gates_failed(card: dict) -> bool:
  """Whether the card records a failed gate (the .tflite check or the bundle's engine check)."""
  check = (card.get("litertlm") or {}).get("engine_check", {})
  return (card.get("status") == "failed" or card.get("verification", {}).get("passed") is False
          or check.get("passed") is False)


def summary(card: dict, out_dir: str) -> dict:
  v = card.get("verification", {})
  errors = [x["error"] for x in (v, (card.get("litertlm") or {}).get("engine_check", {}))
            if x.get("error")]
  return {
      "status": card.get("status") or ("failed" if gates_failed(card) else
                                       "verified" if v.get("passed") else "unverified"),
      "rule": v.get("rule"),
      **({"error": "; ".join(errors)} if errors else {}),
      "file": os.path.join(out_dir, card["model_file"]), "quantization": card["quantization"],
      "bytes": card["bytes"], "budget_bytes": card["budget_bytes"],
      "max_context": card["max_context"], "prefill_len": card["prefill_len"],
      "prefill_tokens_per_s": card["latency"]["prefill_tokens_per_s"],
      "decode_tokens_per_s": card["latency"]["decode_tokens_per_s"],
      "verified": v.get("passed"),
      "greedy_identical": (f"{v['greedy']['identical_prompts']}/{v['greedy']['prompts']}"
                           if "greedy" in v else None),
      "top1_agreement": v.get("teacher_forced", {}).get("top1_agreement"),
      "export_seconds": card.get("export_timings", {}).get("total_s"),
      **_bundle_summary(card, out_dir),
  }


def _bundle_summary(card: dict, out_dir: str) -> dict:
  b = card.get("litertlm")
  if not b:
    return {}
  check = b.get("engine_check", {})
  return {"litertlm_file": os.path.join(out_dir, b["file"]), "litertlm_bytes": b["bytes"],
          "litertlm_prefill_tokens_per_s": b["latency"]["prefill_tokens_per_s"],
          "litertlm_decode_tokens_per_s": b["latency"]["decode_tokens_per_s"],
          "litertlm_top1_agreement": check.get("teacher_forced", {}).get("top1_agreement"),
          "litertlm_verified": check.get("passed"), "litertlm_rule": check.get("rule")}


def failures(results: dict | None) -> list[str]:
  """'<preset>: <message>' for each preset in `run`'s results whose gate failed."""
  return [f"{name}: {x.get('error') or 'verification failed'} (kept in "
          f"{os.path.dirname(x['file'])})"
          for name, x in (results or {}).items() if x.get("status") == "failed"]


def run(config, workdir: str, student_lm, student_params, tokenizer, data_spec) -> dict:
  """Exports every preset in config.export.presets; returns {preset: summary}. A preset that
  fails its gate is in the results with status "failed" and its error; see `failures`.
  `data_spec` is the run's data as it trained (a built-in task's materialised files): the
  export calibrates and verifies on it."""
  c = config.export
  level = c.verify
  # Off unless asked: the bundle's engine check gates on teacher-forced agreement, which a
  # briefly trained student (near-tied logits, e.g. the test suite's 2-step runs) cannot meet.
  litertlm = _want_litertlm(c.litertlm)
  student_dir = os.path.join(workdir, "student")
  results = {}
  for name in c.presets:
    # '' / 0 in configs/base.py: keep the preset's own value.
    preset = presets.resolve(name, **{k: c[name][k] or None for k in _OVERRIDES})
    out_dir = os.path.join(workdir, "export", name)
    threshold = settings.gate_threshold(c[name])
    key = _key(preset, student_dir, level, litertlm, threshold)
    card_file = os.path.join(out_dir, CARD_NAME)
    if os.path.exists(card_file):
      with open(card_file) as f:
        card = json.load(f)
      # A failed gate is redone: the same settings may pass against another student, and a
      # user re-running after a failure means to try again.
      if card.get("source", {}).get("export_key") == key and not gates_failed(card):
        logging.info("[export] %s: finished export found in %s: skipped", name, out_dir)
        results[name] = summary(card, out_dir)
        continue
    source = {"stage_dir": os.path.abspath(student_dir), "export_key": key}
    try:
      card = artifact.export(student_lm, student_params, tokenizer, preset, out_dir,
                             data_spec=data_spec, workdir=workdir,
                             level=level, tokenizer_dir=os.path.join(student_dir, "tokenizer"),
                             source=source, litertlm=litertlm, threshold=threshold,
                             log=lambda msg: print(msg, flush=True))
    except VerificationError:  # published with its card marked failed; the next preset goes on
      with open(card_file) as f:
        card = json.load(f)
    results[name] = summary(card, out_dir)
  return results


def run_gguf(config, workdir: str, student_lm, student_params, tokenizer) -> dict:
  """The GGUF files config.export.gguf asks for, per preset; returns {"<preset>/<quant>":
  {file, bytes, quant, context_length}}. A file newer than the student stage is kept."""
  quants = settings.gguf_quants(config.export)
  stage_json = os.path.join(workdir, "student", "stage.json")
  born = os.path.getmtime(stage_json) if os.path.exists(stage_json) else float("inf")
  out = {}
  for name in config.export.presets:
    preset = presets.resolve(name, max_context=config.export[name].max_context or None)
    out_dir = os.path.join(workdir, "export", f"{name}-gguf")
    for quant in quants:
      path = os.path.join(out_dir, gguf_writer.file_name(quant))
      if os.path.exists(path) and os.path.getmtime(path) >= born:
        logging.info("[export] %s: %s exists and is newer than the student: kept", name, path)
        info = {"file": path, "bytes": os.path.getsize(path), "quant": quant}
      elif jax.process_index() == 0:
        info = gguf_writer.write(out_dir, student_lm.cfg, jax.device_get(student_params),
                                 tokenizer, quant, context_length=preset.max_context,
                                 name=os.path.basename(os.path.abspath(workdir)))
        info.pop("tensors")
        print(f"[export] {name}: {info['file']} ({info['bytes']:,} bytes)", flush=True)
      else:
        continue
      out[f"{name}/{quant}"] = info
  return out
