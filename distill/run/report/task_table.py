"""The report's "Task" section: every model's task metric (config.eval.task) as markdown."""
from __future__ import annotations

from distill.run.report.tables import MODELS, label


def _ci(m: dict) -> str:
  return f"{m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


def task_lines(rep: dict) -> list[str]:
  """Markdown lines: the greedy score with its 95% interval, pass@k, completion length and the
  teacher's NLL of the completions per model, then the greedy score by answer length."""
  names = [m for m in MODELS if "task" in rep.get(m, {})]
  if not names:
    return []
  first = rep[names[0]]["task"]
  g = first["greedy"]
  has_pass = any("pass_at_k" in rep[m]["task"] for m in names)
  head = ["model", f"greedy {first['kind']} (95% {g['interval']})"]
  if has_pass:
    p = next(rep[m]["task"]["pass_at_k"] for m in names if "pass_at_k" in rep[m]["task"])
    head.append(f"pass@{p['k']} ({p['samples']} samples, T={p['temperature']:g})")
  head += ["completion tokens", "ended with EOS", "teacher NLL of completions"]
  lines = ["## Task", "",
           f"{first['prompts']} held-out prompts ({first['prompts_from']}), each completed "
           "greedily by every model; score = the task metric `eval.task.kind="
           f"{first['kind']}`; 95% interval in brackets ({g['interval']}).", "",
           "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for m in names:
    t = rep[m]["task"]
    cells = [label(rep, m), _ci(t["greedy"])]
    if has_pass:
      cells.append(_ci(t["pass_at_k"]) if "pass_at_k" in t else "–")
    nll = t.get("teacher_nll")
    cells += [f"{t['completion_tokens_mean']:.2f}", f"{t['eos_rate']:.1%}",
              "–" if nll is None else f"{nll:.4f}"]
    lines.append("| " + " | ".join(cells) + " |")
  lengths = sorted({L for m in names for L in rep[m]["task"]["by_answer_len"]}, key=int)
  lines += ["", "By answer length (characters of the normalized reference; prompts in "
            "brackets):", "",
            "| model | " + " | ".join(f"{L} ({first['by_answer_len'].get(L, {}).get('n', 0)})"
                                     for L in lengths) + " |",
            "|---" * (len(lengths) + 1) + "|"]
  for m in names:
    b = rep[m]["task"]["by_answer_len"]
    lines.append(f"| {label(rep, m)} | " + " | ".join(_ci(b[L]) if L in b else "–"
                                                       for L in lengths) + " |")
  ex = first.get("examples", [])
  if ex:
    lines += ["", "First completions:", ""]
    for m in names:
      shown = ", ".join(f"`{e['prompt']}` → `{e['completion']!r}` (ref `{e['reference']}`)"
                        for e in rep[m]["task"]["examples"][:3])
      lines.append(f"- **{m}**: {shown}")
  return lines + [""]
