"""report.json, report.md and plots in the workdir: what distillation bought.

The report answers two questions side by side:
  quality  validation CE / bits per byte / perplexity, KL to the teacher, top-1 agreement,
           and the share of the teacher-vs-baseline gap the distilled student closed;
  cost     parameters, forward FLOPs per token, per-token decode latency and CPU seconds per
           1,000 generated tokens on this CPU (JAX, and LiteRT for the exported files), and
           the size of each exported .tflite.

Latency is measured while writing the report (a few milliseconds per model for tiny: one
prefill, then `DECODE_TOKENS` timed greedy decode steps at batch 1), so the numbers describe
the machine the pipeline ran on. Plots: `quality_vs_compute.png` (validation CE against
forward FLOPs/token) and `loss_curves.png` (training curves of every stage).
"""
from __future__ import annotations

import json
import logging
import os
import time

from distill import evaluate

MODELS = ("teacher", "student", "baseline")
COLORS = {"teacher": "tab:blue", "student": "tab:orange", "baseline": "tab:gray"}
COLUMNS = (("val_ce", "val CE (nats/tok)", "{:.4f}"), ("bits_per_byte", "bits/byte", "{:.4f}"),
           ("val_ppl", "ppl", "{:.3f}"), ("kl_to_teacher", "KL(teacher‖model)", "{:.4f}"),
           ("top1_agreement", "top-1 agree", "{:.4f}"), ("params", "params", "{:,}"),
           ("flops_per_token", "FLOPs/token", "{:,.0f}"),
           ("sample_teacher_nll", "teacher NLL of own samples", "{:.4f}"),
           ("sample_repeat_rate", "repeated 4-grams", "{:.3f}"),
           ("sample_len_mean", "sample length", "{:.1f}"))
# Timed greedy decode steps per model: enough to average out timer noise on tiny models while
# keeping the whole measurement to seconds.
DECODE_TOKENS = 32


def build(config, results: dict, walls: dict, total_seconds: float) -> dict:
  rep = {k: v for k, v in results.items()}
  if "baseline" in results:
    rep["gap_closed"] = evaluate.gap_closed(results["teacher"]["val_ce"],
                                            results["student"]["val_ce"],
                                            results["baseline"]["val_ce"])
    if "heldout" in results["student"]:
      rep["heldout_gap_closed"] = evaluate.gap_closed(
          *(results[m]["heldout"]["val_ce"] for m in ("teacher", "student", "baseline")))
  rep["wall_seconds"] = dict(walls, total=total_seconds)
  rep["setup"] = {
      "data": config.data.name, "seq_len": config.data.seq_len,
      "batch_size": config.data.batch_size, "distill_steps": config.distill.steps,
      "teacher_steps": config.teacher.pretrain.steps if not config.teacher.checkpoint else None,
      "teacher_checkpoint": config.teacher.checkpoint or None,
      "transfer_fraction": config.distill.transfer_fraction, "loss": config.distill.loss,
      "temperature": config.distill.temperature, "alpha": config.distill.alpha,
      "seed": config.seed,
      "on_policy": (config.distill.on_policy.to_dict() if "on_policy" in config.distill
                    else None),
      "sample_eval": {k: config.eval.get(k) for k in ("sample_prompts", "sample_prompt_len",
                                                      "sample_gen_len", "sample_temperature")},
      "note": ("student and baseline: same architecture, init, data (the transfer set), order "
               "and steps; the baseline uses hard labels only"),
  }
  return rep


def _fmt(value, fmt):
  return "–" if value is None else fmt.format(value)


def table(rep: dict, part: str | None = None) -> str:
  """Quality table of the validation split, or of the eval set `part` (e.g. "heldout")."""
  names = [m for m in MODELS if m in rep and (part is None or part in rep[m])]
  lines = ["| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
           "|---" * (len(COLUMNS) + 1) + "|"]
  for m in names:
    # Sample metrics come from validation prompts: not repeated under another eval set.
    row = rep[m] if part is None else dict(
        {k: v for k, v in rep[m].items() if not k.startswith("sample_")}, **rep[m][part])
    cells = [_fmt(row.get(k), fmt) for k, _, fmt in COLUMNS]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Latency (measured on this CPU while the report is written).


def _model_dir(workdir: str, config, name: str) -> str:
  if name == "teacher" and config.teacher.checkpoint:
    return config.teacher.checkpoint  # a stage directory or "hf:/path"
  return os.path.join(workdir, name)


def jax_decode_latency(model, tokens: int = DECODE_TOKENS, prompt_ids=None,
                       cache_len: int = 0) -> dict:
  """Greedy decode at batch 1 with `distill.api.Model`'s compiled cached step.

  The prompt's prefill and one decode step compile and warm up; the next `tokens` steps are
  timed in wall and CPU seconds (process_time counts every thread). Given the report
  samples' prompt and cache length, the shapes are the ones `Model.generate` already
  compiled for the samples, so a Model sharing their compiled step pays no compile here.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  lm = model.lm
  prompt = list(prompt_ids or []) or [model.tokenizer.bos_id or 0]
  total = min(max(cache_len, len(prompt) + tokens + 1), lm.cfg.max_len)
  steps = min(tokens, total - len(prompt) - 1)
  if steps < 1:
    raise ValueError(f"no room to decode after a {len(prompt)}-token prompt in {total} slots")
  cache = lm.init_cache(1, total)
  step = model._step  # pylint: disable=protected-access
  logits, cache = step(model.params, jnp.asarray([prompt], jnp.int32), cache, 0)
  tok = int(np.argmax(np.asarray(logits[0, -1])))
  pos = len(prompt)
  logits, cache = step(model.params, jnp.asarray([[tok]], jnp.int32), cache, pos)
  jax.block_until_ready(logits)
  t0, c0 = time.perf_counter(), time.process_time()
  for pos in range(pos + 1, pos + 1 + steps):
    tok = int(np.argmax(np.asarray(logits[0, -1])))  # greedy: the host sees every token
    logits, cache = step(model.params, jnp.asarray([[tok]], jnp.int32), cache, pos)
  jax.block_until_ready(logits)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  return {"runtime": "jax", "decode_ms_per_token": 1e3 * wall / steps,
          "cpu_s_per_1k_tokens": 1e3 * cpu / steps, "decode_steps": steps}


def tflite_decode_latency(path: str, tokens: int = DECODE_TOKENS) -> dict:
  """The same measurement on an exported .tflite through LiteRT (its card beside it)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from distill.export.runtime import LiteRTModel  # pylint: disable=import-outside-toplevel
  m = LiteRTModel(path)
  steps = max(1, min(tokens, m.max_context - 2))
  cache = m.new_cache()
  last, cache = m.decode(m.card.get("bos_id") or 0, 0, cache)  # allocates, warms XNNPACK
  t0, c0 = time.perf_counter(), time.process_time()
  for pos in range(1, steps + 1):
    last, cache = m.decode(int(np.argmax(last)), pos, cache)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  return {"runtime": "litert", "decode_ms_per_token": 1e3 * wall / steps,
          "cpu_s_per_1k_tokens": 1e3 * cpu / steps, "decode_steps": steps,
          "num_threads": m.num_threads}


def measure_latency(workdir: str, rep: dict, config) -> dict:
  """{row name: latency dict}; rows that cannot be measured are left out (logged)."""
  import distill  # pylint: disable=import-outside-toplevel
  out = {}
  prompts = tuple(config.eval.prompts) if "eval" in config else ()
  for name in ("teacher", "student"):
    if name not in rep:
      continue
    try:
      model = distill.load(_model_dir(workdir, config, name))
      # The samples' first prompt and cache length (see Model.generate_ids).
      ids = model.tokenizer.encode(prompts[0]) if prompts else []
      cache_len = len(ids) + int(config.eval.sample_tokens) if ids else 0
      out[name] = jax_decode_latency(model, prompt_ids=ids, cache_len=cache_len)
    except Exception as e:  # pylint: disable=broad-except  # the report must still be written
      logging.warning("[report] JAX latency of %s not measured: %s", name, e)
  for preset, summary in (rep.get("export") or {}).items():
    path = summary.get("file") if isinstance(summary, dict) else None
    if not path or not os.path.exists(path):
      continue
    try:
      lat = tflite_decode_latency(path)
      lat.update(bytes=summary.get("bytes"), quantization=summary.get("quantization"),
                 file=os.path.basename(path),
                 card_decode_tokens_per_s=summary.get("decode_tokens_per_s"))
      out[f"student/{preset}"] = lat
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("[report] LiteRT latency of %s not measured: %s", path, e)
  return out


def litertlm_lines(rep: dict) -> list[str]:
  """LiteRT-LM engine rows for the exported .litertlm bundles (measured at export)."""
  rows = [(p, x) for p, x in (rep.get("export") or {}).items()
          if isinstance(x, dict) and x.get("litertlm_file")]
  if not rows:
    return []
  lines = ["| bundle | quantization | file | LiteRT-LM prefill tok/s | decode tok/s | top-1 agreement |",
           "|---|---|---|---|---|---|"]
  for p, x in rows:
    agree = x.get("litertlm_top1_agreement")
    lines.append(f"| {p}/{os.path.basename(x['litertlm_file'])} | {x.get('quantization')} | "
                 f"{x['litertlm_bytes'] / 1e6:.2f} MB | {x['litertlm_prefill_tokens_per_s']:,.0f} | "
                 f"{x['litertlm_decode_tokens_per_s']:,.0f} | "
                 f"{'n/a' if agree is None else f'{agree:.1%}'} |")
  return ["LiteRT-LM (`.litertlm`, Google's on-device LLM runtime): its own benchmark "
          "(`litert_lm.Benchmark`, one prefill chunk, then decode) at export, and teacher-forced "
          "top-1 agreement with the JAX student through its engine.", "", *lines, ""]


def cost_table(rep: dict) -> str:
  """Params, FLOPs/token, decode latency, CPU-s per 1k tokens, file size: one row per runtime."""
  lat = rep.get("latency", {})
  rows = []
  for name in ("teacher", "student"):
    if name in rep:
      rows.append((f"{name} (JAX)", rep[name].get("params"), rep[name].get("flops_per_token"),
                   lat.get(name, {}), None))
  for key, l in lat.items():
    if key.startswith("student/"):
      rows.append((f"{key} (LiteRT, {l.get('quantization')})", rep["student"].get("params"),
                   rep["student"].get("flops_per_token"), l, l.get("bytes")))
  lines = ["| model | params | FLOPs/token | decode ms/token | CPU-s per 1k tokens | file |",
           "|---|---|---|---|---|---|"]
  for label, params, flops, l, size in rows:
    lines.append(
        f"| {label} | {_fmt(params, '{:,}')} | {_fmt(flops, '{:,.0f}')} | "
        f"{_fmt(l.get('decode_ms_per_token'), '{:.2f}')} | "
        f"{_fmt(l.get('cpu_s_per_1k_tokens'), '{:.2f}')} | "
        f"{_fmt(None if size is None else size / 1e6, '{:.2f} MB')} |")
  return "\n".join(lines)


def _count(n) -> str:
  """1234567 -> '1.23M', 6576 -> '6.6k': readable at every model size in the plots."""
  for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
    if n >= div:
      return f"{n / div:.3g}{unit}"
  return str(int(n))


def _ratio(a, b):
  return a / b if a and b else None


def headline(rep: dict) -> list[str]:
  """Plain-language answer to "what did distillation buy me"."""
  if "student" not in rep or "teacher" not in rep:
    return []
  t, s = rep["teacher"], rep["student"]
  out = []
  if "baseline" in rep:
    b = rep["baseline"]
    verdict = "better" if s["val_ce"] < b["val_ce"] else "worse"
    out.append(f"- **Quality**: the distilled student's validation CE is {s['val_ce']:.4f} "
               f"nats/token vs {b['val_ce']:.4f} for the same-size hard-label baseline "
               f"({verdict} by {abs(b['val_ce'] - s['val_ce']):.4f}); the teacher has "
               f"{t['val_ce']:.4f}. Gap closed: {rep.get('gap_closed', float('nan')):.3f}.")
  flops = _ratio(t.get("flops_per_token"), s.get("flops_per_token"))
  params = _ratio(t.get("params"), s.get("params"))
  if flops and params:
    out.append(f"- **Compute**: the student has {params:.1f}× fewer parameters and needs "
               f"{flops:.1f}× fewer forward FLOPs per token than the teacher.")
  lat = rep.get("latency", {})
  speed = _ratio(lat.get("teacher", {}).get("decode_ms_per_token"),
                 lat.get("student", {}).get("decode_ms_per_token"))
  cpu = _ratio(lat.get("teacher", {}).get("cpu_s_per_1k_tokens"),
               lat.get("student", {}).get("cpu_s_per_1k_tokens"))
  if speed and cpu:
    out.append(f"- **Latency (JAX, this CPU, batch 1)**: student decode is {speed:.1f}× faster "
               f"per token and uses {cpu:.1f}× less CPU time per 1,000 tokens. Tiny models are "
               "dominated by per-step dispatch overhead, so these ratios are smaller than the "
               "FLOPs ratio.")
  files = [(k, v) for k, v in lat.items() if k.startswith("student/") and v.get("bytes")]
  if files:
    out.append("- **On device**: " + "; ".join(
        f"{k.split('/')[1]} file {v['bytes'] / 1e6:.2f} MB ({v.get('quantization')}), "
        f"{v['decode_ms_per_token']:.2f} ms/token with LiteRT here" for k, v in files) + ".")
  return out


# ---------------------------------------------------------------------------------------------
# Plots.


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
    # Same FLOPs: the vertical arrow is exactly what distillation bought at this size.
    x = rep["student"]["flops_per_token"]
    s_ce, b_ce = rep["student"]["val_ce"], rep["baseline"]["val_ce"]
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


# ---------------------------------------------------------------------------------------------


def write(workdir, rep: dict, config) -> None:
  """Measures latency (added to `rep`), draws the plots, writes report.json and report.md."""
  t0 = time.time()
  rep["latency"] = measure_latency(workdir, rep, config)
  rep["wall_seconds"]["report_latency"] = time.time() - t0
  plots = [p for p in (plot_quality_vs_compute(workdir, rep), plot_losses(workdir, rep)) if p]
  rep["plots"] = [os.path.basename(p) for p in plots]
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(rep, f, indent=1, default=float)
  md = ["# distill report", "", "## What distillation bought", ""] + headline(rep) + [""]
  md += ["![quality vs compute](quality_vs_compute.png)", "", "## Quality", "", table(rep), ""]
  if "gap_closed" in rep:
    md.append(f"**gap closed**: {rep['gap_closed']:.3f}  "
              "(= (CE_baseline − CE_student) / (CE_baseline − CE_teacher))")
    md.append("")
  if "heldout_gap_closed" in rep:
    md += ["### Held-out text (never trained on)", "", table(rep, "heldout"), "",
           f"**gap closed** on the held-out text: {rep['heldout_gap_closed']:.3f}", ""]
  md += ["## Cost", "", cost_table(rep), "",
         f"Decode latency: batch 1, {DECODE_TOKENS} greedy tokens after the first sample prompt, "
         "timed on this machine while the report was written (JAX: `distill.api.Model`'s "
         "cached step; LiteRT: the exported file's `decode` signature). CPU seconds are "
         "process CPU time, so they add up the threads used; wall latency on a busy machine "
         "varies more. Files are the exported .tflite sizes; the FLOPs of the exported rows "
         "are the student's (quantization changes bytes, not FLOPs).", ""]
  md += litertlm_lines(rep)
  s = rep["setup"]
  teacher = (f"teacher from `{s['teacher_checkpoint']}`" if s.get("teacher_checkpoint")
             else f"teacher steps {s['teacher_steps']}")
  md += ["## Training", "", "![loss curves](loss_curves.png)", "",
         f"Setup: data `{s['data']}`, seq_len {s['seq_len']}, batch {s['batch_size']}, "
         f"{teacher}, student/baseline steps {s['distill_steps']} on a "
         f"transfer set of {s['transfer_fraction']:.0%} of the train split, loss "
         f"`{s['loss']}` at T={s['temperature']}, alpha={s['alpha']}, seed {s['seed']}. "
         f"{s['note']}.", "",
         "Wall-clock seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in rep["wall_seconds"].items()),
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
