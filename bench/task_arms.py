"""The arm comparison on the built-in addition task (issue 28), as one driver.

  python bench/task_arms.py --root=/tmp/task_arms [--seeds=0,1,2] [--arms=kd,seqkd,...]
      [--config=configs/task_tiny.py] [extra --config.X=Y overrides for every run]

At equal student steps (distill.steps), every arm x seed is one `distill.main` run in its own
workdir, started from a copy of one finished teacher (the `teacher` stage of a base run at
seed 0, trained once; finished stages are skipped, so only the arm's student trains):

  sft           the hard-label baseline on the ground-truth completions (stage `baseline`
                of the `kd` run: same rows, order, steps and seed; its own baseline.lr)
  kd            off-policy KD (distill.loss forward_kl) on the same completions
  seqkd         SeqKD: the teacher's greedy answers to the transfer set's prompts
                (`distill.teacher_cache --generate --temperature=0`), trained with alpha=1
  onpolicy_rkl_0.5 / onpolicy_rkl_1 / onpolicy_jsd_0.5 / onpolicy_jsd_1
                on-policy distillation: share lambda of the steps sampled by the student,
                reverse KL or JSD (beta 0.5) on the sampled tokens

Each prints one JSON line {arm, seed, exact match on the test split with its Wilson interval,
by answer length, teacher forward positions, generated tokens (teacher for SeqKD, student
for on-policy), wall seconds of the arm}. The test split is read once per arm (eval.task);
choose settings on the dev split (the run's validation split) only. Export is off.
"""
import json, os, shutil, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTS = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in sys.argv[1:]
        if a.startswith("--") and not a.startswith("--config.") and "=" in a}
EXTRA = [a for a in sys.argv[1:] if a.startswith("--config.")]
ROOT = OPTS.get("--root", "/tmp/task_arms")
CONFIG = OPTS.get("--config", "configs/task_tiny.py")
SEEDS = [int(s) for s in OPTS.get("--seeds", "0,1,2").split(",")]
ARMS = {"kd": [], "seqkd": ["--config.distill.alpha=1.0"]}
for _div, _short in (("reverse_kl", "rkl"), ("jsd", "jsd")):
  for _lam in ("0.5", "1"):
    ARMS[f"onpolicy_{_short}_{_lam}"] = [f"--config.distill.on_policy.fraction={_lam}",
                                         f"--config.distill.on_policy.divergence={_div}"]
WANTED = OPTS.get("--arms", ",".join(ARMS)).split(",")
os.makedirs(ROOT, exist_ok=True)
LOG = open(os.path.join(ROOT, "arms.log"), "a", buffering=1)


def log(*a):
  print(time.strftime("%H:%M:%S"), *a, file=LOG)


def run(module, wd, *extra, config=CONFIG):
  cmd = [sys.executable, "-m", module, f"--config={config}", f"--workdir={wd}", *EXTRA, *extra]
  log("RUN", " ".join(cmd))
  t = time.time()
  with open(wd.rstrip("/") + ".log", "a") as f:
    out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True)
    f.write(out.stdout)
  log("rc", out.returncode, "in", round(time.time() - t), "s", wd)
  if out.returncode:
    raise SystemExit(f"{module} failed in {wd} (rc {out.returncode}); see {wd}.log")
  return out.stdout, time.time() - t


def copy_teacher(base, dst):
  """A new workdir holding only the base run's finished teacher stage and its data."""
  if os.path.exists(os.path.join(dst, ".copied")):
    return
  shutil.rmtree(dst, ignore_errors=True)
  os.makedirs(dst)
  for n in ("teacher", "data"):
    shutil.copytree(os.path.join(base, n), os.path.join(dst, n), symlinks=True)
  open(os.path.join(dst, ".copied"), "w").close()


def steps_and_batch(wd):
  with open(os.path.join(wd, "report.json")) as f:
    s = json.load(f)["setup"]
  return s["distill_steps"], s["batch_size"], s["seq_len"]


def onpolicy_tokens(wd, batch):
  """Tokens the student sampled: sum over on-policy steps of batch x mean sample length."""
  total = 0.0
  with open(os.path.join(wd, "student", "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if row.get("on_policy"):
        total += batch * row.get("sample_len", 0.0)
  return int(total)


def result(arm, seed, wd, model, wall, extra):
  with open(os.path.join(wd, "report.json")) as f:
    rep = json.load(f)
  t = rep[model]["task"]
  steps, batch, seq_len = steps_and_batch(wd)
  line = {"arm": arm, "seed": seed, "model": model, "steps": steps,
          "exact_match": t["greedy"], "by_answer_len": t["by_answer_len"],
          "teacher_exact_match": rep["teacher"]["task"]["greedy"]["mean"],
          "completion_tokens_mean": t["completion_tokens_mean"],
          "teacher_nll": t.get("teacher_nll"), "wall_seconds": wall,
          "stage_wall_seconds": rep["wall_seconds"].get(model.replace("_best", "")),
          "teacher_forward_positions": 0 if arm == "sft" else steps * batch * seq_len, **extra}
  print(json.dumps(line), flush=True)
  log("RESULT", json.dumps(line))


def main():
  base = os.path.join(ROOT, "teacher_base")
  # The teacher, once: a base run that stops after its teacher stage has the files we copy.
  if not os.path.exists(os.path.join(base, "teacher", "stage.json")):
    run("distill.main", base, "--config.distill.steps=1", "--config.baseline.enabled=False",
        "--config.export.enabled=False", "--config.eval.task.kind=", "--config.seed=0")
  for seed in SEEDS:
    for arm in WANTED:
      wd = os.path.join(ROOT, f"{arm}_s{seed}")
      copy_teacher(base, wd)
      common = [f"--config.seed={seed}", "--config.export.enabled=False"]
      extra = {}
      t0 = time.time()
      if arm == "seqkd":
        # --prompt_len is unused on tables (each example's own prompt) but must fit seq_len.
        out, _ = run("distill.teacher_cache", wd, "--generate", "--temperature=0", "--prompt_len=1",
                     f"--out={wd}/seqkd", *common)
        meta = json.loads(out.strip().splitlines()[-1])
        extra["teacher_generated_tokens"] = int(meta["rows"] * meta["mean_generated"])
        common.append(f"--config.distill.transfer_set=generated:{wd}/seqkd")
      baseline = "True" if arm == "kd" else "False"
      _, wall = run("distill.main", wd, *common, *ARMS[arm],
                    f"--config.baseline.enabled={baseline}")
      wall = time.time() - t0
      if arm.startswith("onpolicy"):
        extra["student_generated_tokens"] = onpolicy_tokens(wd, steps_and_batch(wd)[1])
      result(arm, seed, wd, "student", wall, extra)
      if arm == "kd":  # the SFT arm trained beside it, on the same rows
        with open(os.path.join(wd, "baseline", "stage.json")) as f:
          result("sft", seed, wd, "baseline", json.load(f)["wall_seconds"], {})
  log("ALL DONE")


if __name__ == "__main__":
  main()
