"""The report's plots: quality vs compute, and the training curves of every stage."""
from __future__ import annotations

import json
import os

from distill.run.report.tables import MODELS, gap_models

COLORS = {"teacher": "tab:blue", "student": "tab:orange", "student_fp32": "tab:purple",
          "baseline": "tab:gray", "baseline_same_recipe": "tab:brown",
          "baseline_more_labels": "tab:olive"}
COLORS.update({f"{m}_best": c for m, c in list(COLORS.items()) if m != "teacher"})


def _history(workdir, stage):
  path = os.path.join(workdir, stage, "metrics.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue  # a line cut by a kill
  return rows


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _ema(values, weight: float = 0.9):
  out, acc = [], None
  for v in values:
    acc = v if acc is None else weight * acc + (1 - weight) * v
    out.append(acc)
  return out


def plot_losses(workdir, rep: dict | None = None) -> str | None:
  """Train CE of every stage (left) and the student's distillation objective (right).

  Dashed horizontal lines mark each model's final validation CE, so the end of the training
  curves can be read against held-out quality.
  """
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  drawn = False
  for stage in MODELS:
    rows = [r for r in _history(workdir, stage) if "ce" in r]
    if not rows:
      continue
    drawn = True
    steps = [r["step"] for r in rows]
    # Per-step training CE is noisy (one batch each): faint raw values, an EMA on top.
    ce = [r["ce"] for r in rows]
    axes[0].plot(steps, ce, color=COLORS[stage], alpha=0.25, lw=0.8)
    axes[0].plot(steps, _ema(ce), color=COLORS[stage], label=f"{stage} (train, EMA)")
    if rep and stage in rep and "val_ce" in rep[stage]:
      axes[0].axhline(rep[stage]["val_ce"], color=COLORS[stage], ls="--", lw=1,
                      label=f"{stage} (validation)")
    if stage == "student":
      axes[1].plot(steps, [r["loss"] for r in rows], color=COLORS[stage],
                   label="distillation loss")
      # With alpha > 0 the objective mixes in hard-label CE; show the soft part on its own.
      if any(abs(r.get("divergence", r["loss"]) - r["loss"]) > 1e-6 for r in rows):
        axes[1].plot(steps, [r.get("divergence", float("nan")) for r in rows],
                     color=COLORS[stage], ls=":", label="divergence term")
  if not drawn:
    plt.close(fig)
    return None
  axes[0].set(xlabel="step", ylabel="cross-entropy (nats/token)",
              title="Hard-label cross-entropy")
  setup = (rep or {}).get("setup", {})
  what = (f"{setup['loss']} at T={setup['temperature']}, alpha={setup['alpha']}"
          if "loss" in setup else "")
  axes[1].set(xlabel="step", ylabel="loss (divergence × T² when scale_by_t2)",
              title="Student's distillation objective" + (f"\n({what})" if what else ""))
  # The first steps sit near log(vocab) and squash the end of the curves, where the stages
  # differ: the top of the axis is where the highest curve is a tenth of the way in.
  lows, tops = [], []
  for stage in MODELS:
    ce = [r["ce"] for r in _history(workdir, stage) if "ce" in r]
    if ce:
      lows.append(min(ce))
      tops.append(max(ce[len(ce) // 10:]))
      if rep and stage in rep and "val_ce" in rep[stage]:
        lows.append(rep[stage]["val_ce"])
        tops.append(rep[stage]["val_ce"])
  if lows:
    span = max(max(tops) - min(lows), 1e-3)
    axes[0].set_ylim(min(lows) - 0.05 * span, max(tops) + 0.05 * span)
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  for a in axes:
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.grid(alpha=0.3)
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(workdir, "loss_curves.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_quality_vs_compute(workdir, rep: dict) -> str | None:
  """Validation CE (lower is better) against forward FLOPs/token (log scale), one point each."""
  # Best checkpoints have no FLOPs entry: the same model as their stage, one point each.
  names = [m for m in MODELS if m in rep and rep[m].get("flops_per_token")]
  if not names:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for m in names:
    x, y = rep[m]["flops_per_token"], rep[m]["val_ce"]
    ax.scatter([x], [y], s=80, color=COLORS[m], zorder=3, label=m)
    ax.annotate(f"{m}\n{y:.3f} nats, {_count(rep[m]['params'])} params", (x, y),
                textcoords="offset points", xytext=(8, 6), fontsize=8)
  if "student" in rep and "baseline" in rep:
    # Same FLOPs: the vertical arrow is exactly what distillation bought at this size (between
    # the models gap closed compares: the best checkpoints when selected).
    x = rep["student"]["flops_per_token"]
    s_ce, b_ce = (rep[m]["val_ce"] for m in gap_models(rep))
    ax.annotate("", xy=(x, s_ce), xytext=(x, b_ce),
                arrowprops=dict(arrowstyle="->", color="tab:green", lw=1.5))
    ax.annotate(f"distillation\n{s_ce - b_ce:+.3f} nats", (x, (s_ce + b_ce) / 2),
                textcoords="offset points", xytext=(-8, 0), ha="right", va="center",
                fontsize=8, color="tab:green")
  xs = [rep[m]["flops_per_token"] for m in names]
  ys = [rep[m]["val_ce"] for m in names]
  ax.set_xscale("log")
  ax.set_xlim(min(xs) / 4, max(xs) * 4)  # room for the labels on both sides
  pad = max(0.05, 0.25 * (max(ys) - min(ys)))
  ax.set_ylim(min(ys) - pad, max(ys) + pad)
  ax.set(xlabel="forward FLOPs per token (log scale)",
         ylabel="validation cross-entropy (nats/token)",
         title="Quality vs compute (lower-left is better)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  path = os.path.join(workdir, "quality_vs_compute.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _count(n) -> str:
  """1234567 -> '1.23M', 6576 -> '6.6k': readable at every model size in the plots."""
  for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
    if n >= div:
      return f"{n / div:.3g}{unit}"
  return str(int(n))
