"""report.json, report.md and plots in the workdir: what distillation bought.

The report answers two questions side by side:
  quality  validation CE / bits per byte / perplexity, KL to the teacher, top-1 agreement,
           and the share of the teacher-vs-baseline gap the distilled student closed (between
           the best dev-split checkpoints, `<stage>_best` rows, when selected; the old
           same-recipe figure beside it), the more-labels baseline when trained;
  cost     parameters, forward FLOPs per token, per-token decode latency and CPU seconds per
           1,000 generated tokens on this CPU (JAX, and LiteRT for the exported files), and
           the size of each exported .tflite.

Latency is measured while writing the report (a few milliseconds per model for tiny: one
prefill, then `DECODE_TOKENS` timed greedy decode steps at batch 1), so the numbers describe
the machine the pipeline ran on. Plots: `quality_vs_compute.png` (validation CE against
forward FLOPs/token) and `loss_curves.png` (training curves of every stage). The pipeline
writes the report once evaluation is done and again after the export, which adds the Export
section: each file, its gate, its figures and its verdict (a failed gate marked FAILED).
"""
from __future__ import annotations

import json
import os
import time

from distill.eval import metrics as evaluate
from distill.run import settings
# One module per concern (tables, latency, plots); this package is their public face.
from distill.run.report.latency import (DECODE_TOKENS, jax_decode_latency, measure_latency,
                                        tflite_decode_latency)
from distill.run.report.plots import COLORS, plot_losses, plot_quality_vs_compute
from distill.run.report.tables import (COLUMNS, MODELS, cost_table, ensemble_lines,
                                       export_lines, gap_models, headline, label, litertlm_lines,
                                       same_recipe_models, table)
from distill.run.report.task_table import task_lines

__all__ = ["COLORS", "COLUMNS", "DECODE_TOKENS", "MODELS", "build", "cost_table",
           "ensemble_lines", "export_lines",
           "gap_models", "headline", "label", "same_recipe_models",
           "jax_decode_latency", "litertlm_lines", "measure_latency", "plot_losses",
           "plot_quality_vs_compute", "table", "task_lines", "tflite_decode_latency", "write"]


def _gap(results: dict, student: str, baseline: str, part: str | None = None) -> float:
  # Across tokenizers tokens differ, so the gap is taken in bits/byte (the common figure).
  key = "bits_per_byte" if results["teacher"].get("cross_tokenizer") else "val_ce"
  ce = [(results[m][part] if part else results[m])[key] for m in ("teacher", student, baseline)]
  return evaluate.gap_closed(*ce)


def build(config, results: dict, walls: dict, total_seconds: float) -> dict:
  """The report dict. Gap closed is taken between the best dev checkpoints when selected (the
  tuned, early-stopped baseline: `gap_models`); `gap_closed_same_recipe` keeps the old figure
  (last steps, the baseline at the student's learning rate)."""
  rep = {k: v for k, v in results.items()}
  if "baseline" in results:
    pairs = {"gap_closed": gap_models(rep), "gap_closed_same_recipe": same_recipe_models(rep)}
    rep["gap_closed_models"] = {k: list(v) for k, v in pairs.items()}
    for key, (s, b) in pairs.items():
      rep[key] = _gap(results, s, b)
      if "heldout" in results[s] and "heldout" in results[b]:
        rep[f"heldout_{key}"] = _gap(results, s, b, "heldout")
  if "baseline_more_labels" in results:
    more = ("baseline_more_labels_best" if "baseline_more_labels_best" in results
            else "baseline_more_labels")
    rep["more_labels"] = {"model": more, "student_minus": (
        results[gap_models(rep)[0]]["val_ce"] - results[more]["val_ce"])}
  rep["wall_seconds"] = dict(walls, total=total_seconds)
  specs = settings.teachers(config)
  if len(specs) > 1:  # the `teacher` row is the mixture; each member has its own row
    rep["ensemble"] = {"members": [t.name for t in specs], "weights": [t.weight for t in specs]}
  # The dtypes the models multiplied in and why (distill.run.precision; the run's first line).
  rep["precision"] = settings.precision(config).as_dict()
  rep["setup"] = {
      "data": config.data.name, "seq_len": config.data.seq_len,
      "batch_size": config.data.batch_size, "distill_steps": config.distill.steps,
      "teacher_steps": config.teacher.pretrain.steps if not config.teacher.checkpoint else None,
      "teacher_checkpoint": config.teacher.checkpoint or None,
      "teachers": [dict(t) for t in config.get("teachers", ())] or None,
      "transfer_fraction": config.distill.transfer_fraction, "loss": config.distill.loss,
      "temperature": config.distill.temperature, "alpha": config.distill.alpha,
      "seed": config.seed,
      "on_policy": (config.distill.on_policy.to_dict() if "on_policy" in config.distill
                    else None),
      "qat": {k: config.distill.get(k) for k in ("qat", "qat_start_fraction", "qat_steps",
                                                 "qat_lr", "qat_activations")},
      "sample_eval": {k: config.eval.get(k) for k in ("sample_prompts", "sample_prompt_len",
                                                      "sample_gen_len", "sample_temperature",
                                                      "sample_draws")},
      "baseline_lr": config.baseline.lr, "distill_lr": config.distill.lr,
      "dev_fraction": config.data.dev_fraction, "dev_every": config.train.dev_every,
      "select_best": config.train.select_best,
      "task": config.eval.task.to_dict() if "task" in config.eval else None,
      "note": ("student and baseline: same architecture, init, data (the transfer set), order "
               "and steps; the baseline uses hard labels only, at its own learning rate "
               "(baseline.lr)"),
  }
  return rep


def write(workdir, rep: dict, config) -> None:
  """Measures latency (added to `rep`), draws the plots, writes report.json and report.md.

  The pipeline calls it as soon as evaluation is done and again after the export (with
  rep["export"]); the second call measures only the rows the first did not have."""
  t0 = time.time()
  rep["latency"] = measure_latency(workdir, rep, config, known=rep.get("latency"))
  rep["wall_seconds"]["report_latency"] = (rep["wall_seconds"].get("report_latency", 0.0)
                                           + time.time() - t0)
  plots = [p for p in (plot_quality_vs_compute(workdir, rep), plot_losses(workdir, rep)) if p]
  rep["plots"] = [os.path.basename(p) for p in plots]
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(rep, f, indent=1, default=float)
  md = ["# distill report", "", "## What distillation bought", ""] + headline(rep) + [""]
  md += ["![quality vs compute](quality_vs_compute.png)", "", "## Quality", "", table(rep), ""]
  if "gap_closed" in rep:
    (s, b), (s0, b0) = (rep["gap_closed_models"][k] for k in ("gap_closed",
                                                               "gap_closed_same_recipe"))
    md += [f"**gap closed**: {rep['gap_closed']:.3f}  (= (CE_baseline − CE_student) / "
           f"(CE_baseline − CE_teacher), {s} against {b}); same recipe, last steps "
           f"({s0} against {b0}): {rep['gap_closed_same_recipe']:.3f}", ""]
  if "gap_closed" in rep and rep["setup"].get("select_best"):
    md += [f"`_best` rows: each stage at its lowest dev-split loss (dev split: "
           f"{rep['setup']['dev_fraction']:.0%} of the train split, never trained on; checked "
           f"every {rep['setup']['dev_every']} steps), step in brackets. The exported student "
           "is the last step's.", ""]
  md += ensemble_lines(rep)
  md += task_lines(rep)
  if "heldout_gap_closed" in rep:
    md += ["### Held-out text (never trained on)", "", table(rep, "heldout"), "",
           f"**gap closed** on the held-out text: {rep['heldout_gap_closed']:.3f} (same "
           f"recipe: {rep.get('heldout_gap_closed_same_recipe', float('nan')):.3f})", ""]
  md += ["## Cost", "", cost_table(rep), "",
         f"Decode latency: batch 1, {DECODE_TOKENS} greedy tokens after the first sample prompt, "
         "timed on this machine while the report was written (JAX: `distill.inference.model.Model`'s "
         "cached step; LiteRT: the exported file's `decode` signature). CPU seconds are "
         "process CPU time, so they add up the threads used; wall latency on a busy machine "
         "varies more. Files are the exported .tflite sizes; the FLOPs of the exported rows "
         "are the student's (quantization changes bytes, not FLOPs).", ""]
  md += export_lines(rep)
  md += litertlm_lines(rep)
  s = rep["setup"]
  teacher = (f"teacher from `{s['teacher_checkpoint']}`" if s.get("teacher_checkpoint")
             else f"teacher steps {s['teacher_steps']}")
  lrs = (f" (peak lr {s['distill_lr']:g} / {s['baseline_lr']:g})" if "baseline_lr" in s
         else "")
  md += ["## Training", "", "![loss curves](loss_curves.png)", "",
         f"Setup: data `{s['data']}`, seq_len {s['seq_len']}, batch {s['batch_size']}, "
         f"{teacher}, student/baseline steps {s['distill_steps']}{lrs} on a "
         f"transfer set of {s['transfer_fraction']:.0%} of the train split, loss "
         f"`{s['loss']}` at T={s['temperature']}, alpha={s['alpha']}, seed {s['seed']}. "
         f"{s['note']}.", ""]
  if "precision" in rep:
    p = rep["precision"]
    md += [f"Precision: {p['dtype']} matmul inputs, teacher held in {p['teacher_dtype']} "
           f"({p['reason']}); fp32 accumulation, norms, softmax, losses and master weights.", ""]
  md += ["Wall-clock seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in rep["wall_seconds"].items()),
         "", "## Samples (greedy)", ""]
  for m in MODELS:
    for prompt, text in rep.get(m, {}).get("samples", {}).items():
      md.append(f"- **{m}** `{prompt}` → `{text!r}`")
  chats = [(m, p, t) for m in MODELS for p, t in rep.get(m, {}).get("chat_samples", {}).items()]
  if chats:
    md += ["", "## Chat samples (the prompt as a user turn through the chat template)", ""]
    md += [f"- **{m}** `{p}` → `{t!r}`" for m, p, t in chats]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(md) + "\n")
