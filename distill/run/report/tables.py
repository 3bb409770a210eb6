"""The report's markdown tables and headline: quality, cost, LiteRT-LM rows."""
from __future__ import annotations

import os

# student_fp32: the full-precision student a QAD stage (distill.qat_steps) started from;
# baseline_same_recipe: the baseline at the student's learning rate (baseline.same_recipe);
# baseline_more_labels: the baseline on the whole train split (baseline.more_labels);
# <name>_best: that stage's best dev-split checkpoint (train.select_best).
MODELS = ("teacher", "student", "student_best", "student_fp32", "student_fp32_best", "baseline",
          "baseline_best", "baseline_same_recipe", "baseline_more_labels",
          "baseline_more_labels_best")


def gap_models(rep: dict) -> tuple[str, str]:
  """(student, baseline) that gap closed compares: the best dev checkpoints when selected
  (the tuned, early-stopped baseline), else the last steps."""
  return tuple(f"{m}_best" if f"{m}_best" in rep else m for m in ("student", "baseline"))


def same_recipe_models(rep: dict) -> tuple[str, str]:
  """(student, baseline) of the old same-recipe gap closed: last steps, the baseline at the
  student's learning rate (baseline_same_recipe when baseline.lr differs, else baseline)."""
  return "student", ("baseline_same_recipe" if "baseline_same_recipe" in rep else "baseline")


def label(rep: dict, m: str) -> str:
  """A table's row name: a best checkpoint says its step."""
  step = rep[m].get("step") if m.endswith("_best") else None
  return f"{m} (step {step})" if step is not None else m
COLUMNS = (("val_ce", "val CE (nats/tok)", "{:.4f}"), ("bits_per_byte", "bits/byte", "{:.4f}"),
           ("val_ppl", "ppl", "{:.3f}"), ("kl_to_teacher", "KL(teacher‖model)", "{:.4f}"),
           ("top1_agreement", "top-1 agree", "{:.4f}"), ("params", "params", "{:,}"),
           ("flops_per_token", "FLOPs/token", "{:,.0f}"),
           ("sample_teacher_nll", "teacher NLL of own samples", "{:.4f}"),
           ("sample_repeat_rate", "repeated 4-grams", "{:.3f}"),
           ("sample_len_mean", "sample length", "{:.1f}"))


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
    lines.append(f"| {label(rep, m)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def ensemble_lines(rep: dict) -> list[str]:
  """The teacher ensemble's members (`config.teachers`), each beside the mixture (the
  `teacher` row above): weight, CE, KL from the ensemble, size, pretraining time."""
  ens = rep.get("ensemble")
  if not ens:
    return []
  lines = ["### Teacher ensemble", "",
           "The `teacher` row is the mixture the student learns from, P = Σ w_i p_i / Σ w_i; "
           "KL here is KL(ensemble‖member).", "",
           "| teacher | weight | val CE | held-out CE | KL(ensemble‖member) | params | "
           "pretraining s |", "|---|---|---|---|---|---|---|"]
  walls = rep.get("wall_seconds", {})
  for name, w in zip(ens["members"], ens["weights"]):
    m = rep.get(name, {})
    held = m.get("heldout", {}).get("val_ce")
    lines.append(f"| {name} | {w:g} | {_fmt(m.get('val_ce'), '{:.4f}')} | "
                 f"{_fmt(held, '{:.4f}')} | {_fmt(m.get('kl_to_teacher'), '{:.4f}')} | "
                 f"{_fmt(m.get('params'), '{:,}')} | {_fmt(walls.get(name), '{:.1f}')} |")
  return lines + [""]


def _pct(x):
  return "–" if x is None else f"{x:.1%}"


def export_lines(rep: dict) -> list[str]:
  """One row per exported preset: file, its gate (rule), the figures and the verdict; a failed
  gate's message below the table. Empty before the export (the report's first write)."""
  rows = [(p, x) for p, x in (rep.get("export") or {}).items() if isinstance(x, dict)]
  if not rows:
    return []
  lines = ["## Export", "", "| preset | file | quantization | size | greedy identical | "
           "top-1 agreement | gate | verdict |", "|---|---|---|---|---|---|---|---|"]
  notes = []
  for p, x in rows:
    verdict = {"failed": "**FAILED**", "verified": "passed"}.get(x.get("status"), "not checked")
    lines.append(f"| {p} | {os.path.basename(x['file'])} | {x.get('quantization')} | "
                 f"{x['bytes'] / 1e6:.2f} MB | {x.get('greedy_identical') or '–'} | "
                 f"{_pct(x.get('top1_agreement'))} | {x.get('rule') or '–'} | {verdict} |")
    if x.get("error"):
      notes.append(f"- **{p}** failed its gate, the file is kept (its model card says "
                   f"`status: failed`): {x['error']}")
  return lines + [""] + (notes + [""] if notes else [])


def litertlm_lines(rep: dict) -> list[str]:
  """LiteRT-LM engine rows for the exported .litertlm bundles (measured at export)."""
  rows = [(p, x) for p, x in (rep.get("export") or {}).items()
          if isinstance(x, dict) and x.get("litertlm_file")]
  if not rows:
    return []
  lines = ["| bundle | quantization | file | LiteRT-LM prefill tok/s | decode tok/s | "
           "top-1 agreement | engine check |", "|---|---|---|---|---|---|---|"]
  for p, x in rows:
    agree = x.get("litertlm_top1_agreement")
    check = {True: "passed", False: "**FAILED**"}.get(x.get("litertlm_verified"), "not run")
    lines.append(f"| {p}/{os.path.basename(x['litertlm_file'])} | {x.get('quantization')} | "
                 f"{x['litertlm_bytes'] / 1e6:.2f} MB | {x['litertlm_prefill_tokens_per_s']:,.0f} | "
                 f"{x['litertlm_decode_tokens_per_s']:,.0f} | "
                 f"{'n/a' if agree is None else f'{agree:.1%}'} | {check} |")
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


def _ratio(a, b):
  return a / b if a and b else None


def headline(rep: dict) -> list[str]:
  """Plain-language answer to "what did distillation buy me"."""
  if "student" not in rep or "teacher" not in rep:
    return []
  t = rep["teacher"]
  out = []
  if "baseline" in rep:
    sk, bk = gap_models(rep)
    s, b = rep[sk], rep[bk]
    verdict = "better" if s["val_ce"] < b["val_ce"] else "worse"
    out.append(f"- **Quality**: the distilled student's validation CE is {s['val_ce']:.4f} "
               f"nats/token ({label(rep, sk)}) vs {b['val_ce']:.4f} for the same-size "
               f"hard-label baseline ({label(rep, bk)}; {verdict} by "
               f"{abs(b['val_ce'] - s['val_ce']):.4f}); the teacher has {t['val_ce']:.4f}. "
               f"Gap closed: {rep.get('gap_closed', float('nan')):.3f} (same recipe, last "
               f"steps: {rep.get('gap_closed_same_recipe', float('nan')):.3f}).")
  more = rep.get("more_labels")
  if more:
    out.append(f"- **More labels instead**: the baseline trained on the whole train split "
               f"({label(rep, more['model'])}) reaches {rep[more['model']]['val_ce']:.4f}; "
               f"the distilled student is {'better' if more['student_minus'] < 0 else 'worse'} "
               f"by {abs(more['student_minus']):.4f} nats/token.")
  s = rep["student"]
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
