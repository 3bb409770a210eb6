"""report.json, report.md and plots in the workdir: what distillation bought."""
from __future__ import annotations

import json
import os

from distill import evaluate

MODELS = ("teacher", "student", "baseline")
COLUMNS = (("val_ce", "val CE (nats/tok)", "{:.4f}"), ("bits_per_byte", "bits/byte", "{:.4f}"),
           ("val_ppl", "ppl", "{:.3f}"), ("kl_to_teacher", "KL(teacher‖model)", "{:.4f}"),
           ("top1_agreement", "top-1 agree", "{:.4f}"), ("params", "params", "{:,}"),
           ("flops_per_token", "FLOPs/token", "{:,.0f}"))


def build(config, results: dict, walls: dict, total_seconds: float) -> dict:
  rep = {k: v for k, v in results.items()}
  if "baseline" in results:
    rep["gap_closed"] = evaluate.gap_closed(results["teacher"]["val_ce"],
                                            results["student"]["val_ce"],
                                            results["baseline"]["val_ce"])
  rep["wall_seconds"] = dict(walls, total=total_seconds)
  rep["setup"] = {
      "data": config.data.name, "seq_len": config.data.seq_len,
      "batch_size": config.data.batch_size, "distill_steps": config.distill.steps,
      "teacher_steps": config.teacher.pretrain.steps if not config.teacher.checkpoint else None,
      "transfer_fraction": config.distill.transfer_fraction, "loss": config.distill.loss,
      "temperature": config.distill.temperature, "alpha": config.distill.alpha,
      "seed": config.seed,
      "note": ("student and baseline: same architecture, init, data (the transfer set), order "
               "and steps; the baseline uses hard labels only"),
  }
  return rep


def table(rep: dict) -> str:
  names = [m for m in MODELS if m in rep]
  lines = ["| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
           "|---" * (len(COLUMNS) + 1) + "|"]
  for m in names:
    cells = [fmt.format(rep[m][k]) for k, _, fmt in COLUMNS]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _history(workdir, stage):
  path = os.path.join(workdir, stage, "metrics.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  return rows


def plot_losses(workdir) -> str | None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for stage in MODELS:
    rows = _history(workdir, stage)
    if not rows:
      continue
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["ce"] for r in rows], label=f"{stage} train CE")
    if stage == "student":
      axes[1].plot(steps, [r["loss"] for r in rows], label="student distill loss")
  axes[0].set(xlabel="step", ylabel="nats/token", title="Hard-label cross-entropy (train)")
  axes[1].set(xlabel="step", ylabel="loss", title="Distillation objective")
  for a in axes:
    a.grid(alpha=0.3)
    a.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "loss_curves.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write(workdir, rep: dict, config) -> None:
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(rep, f, indent=1, default=float)
  plot_losses(workdir)
  md = ["# distill report", "", table(rep), ""]
  if "gap_closed" in rep:
    md.append(f"**gap closed**: {rep['gap_closed']:.3f}  "
              "(= (CE_baseline − CE_student) / (CE_baseline − CE_teacher))")
    md.append("")
  s = rep["setup"]
  md += [f"Setup: data `{s['data']}`, seq_len {s['seq_len']}, batch {s['batch_size']}, "
         f"teacher steps {s['teacher_steps']}, student/baseline steps {s['distill_steps']} on a "
         f"transfer set of {s['transfer_fraction']:.0%} of the train split, loss "
         f"`{s['loss']}` at T={s['temperature']}, alpha={s['alpha']}, seed {s['seed']}. "
         f"{s['note']}.", "",
         "Wall-clock seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in rep["wall_seconds"].items()),
         "", "![loss curves](loss_curves.png)", "", "## Samples (greedy)", ""]
  for m in MODELS:
    for prompt, text in rep.get(m, {}).get("samples", {}).items():
      md.append(f"- **{m}** `{prompt}` → `{text!r}`")
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(md) + "\n")
