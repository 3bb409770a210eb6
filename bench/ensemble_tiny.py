"""Acceptance 4 of issue 33: a student distilled from an ensemble of two teachers against
students distilled from each teacher alone, at the same steps, on configs/tiny.py.

  python bench/ensemble_tiny.py --root=/tmp/ens --seeds=0,1,2 [--teacher_seeds=0,1] [--config=tiny:small]

Two teachers pretrained as the tiny teacher is, with teacher seeds 0 and 1 (`config.teachers`
entries {seed}); for each student seed (`config.seed`: student init and data order) three
students: teacher A alone, teacher B alone, and the equal-weight ensemble A+B, everything else
the tiny config's (online teacher, 250 steps, T = 2). The first run (ensemble, first seed)
pretrains both teachers; every other workdir starts as a copy of their finished stage
directories and of the tokenized data (finished stages are skipped), so each run trains only
its student. The ensemble runs also train the tiny hard-label baseline (its own rate, 1e-2), for
reference. Export and sample metrics are off. Prints one JSON line: the val and held-out CE of
each run's report.json (student last step and best dev checkpoint, the teachers), and means.
"""
import json, os, shutil, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
ROOT = opts.get("root", "/tmp/ensemble_tiny")
SEEDS = [int(s) for s in opts.get("seeds", "0,1,2").split(",")]
CONFIG = opts.get("config", "configs/tiny.py")  # tiny:small = a quick dry run of this driver
TA, TB = (int(s) for s in opts.get("teacher_seeds", "0,1").split(","))
os.makedirs(ROOT, exist_ok=True)
LOG = open(os.path.join(ROOT, "bench.log"), "a", buffering=1)
ARMS = {"A": f"({{'seed': {TA}, 'weight': 1.0}},)", "B": f"({{'seed': {TB}, 'weight': 1.0}},)",
        "ensemble": f"({{'seed': {TA}, 'weight': 1.0}}, {{'seed': {TB}, 'weight': 1.0}})"}


def log(*a):
  print(time.strftime("%H:%M:%S"), *a, file=LOG)


def run(wd, *extra):
  cmd = [sys.executable, "-m", "distill.main", f"--config={CONFIG}", f"--workdir={wd}",
         "--config.export.enabled=False", "--config.eval.sample_prompts=0", *extra]
  log("RUN", " ".join(cmd))
  t = time.time()
  with open(wd + ".log", "a") as f:
    rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  log("rc", rc, "in", round(time.time() - t), "s", wd)
  if rc:
    raise SystemExit(f"{wd}: exit {rc}; see {wd}.log")
  with open(os.path.join(wd, "report.json")) as f:
    return json.load(f)


def seed_from(first, wd):
  """wd starts with `first`'s finished teacher stages and tokenized data."""
  if os.path.exists(os.path.join(wd, "report.json")):
    return
  os.makedirs(wd, exist_ok=True)
  for n in (f"teacher_seed{TA}", f"teacher_seed{TB}", "data"):
    if not os.path.exists(os.path.join(wd, n)):
      shutil.copytree(os.path.join(first, n), os.path.join(wd, n), symlinks=True)


def figures(rep, model):
  m = rep[model]
  return {"val_ce": m["val_ce"], "heldout_ce": m.get("heldout", {}).get("val_ce"),
          "bits_per_byte": m["bits_per_byte"]}


out = {"config": CONFIG, "teacher_seeds": [TA, TB], "seeds": SEEDS, "runs": {}}
first = None
for seed in SEEDS:
  res = out["runs"][str(seed)] = {}
  for arm in ("ensemble", "A", "B"):
    wd = f"{ROOT}/s{seed}_{arm}"
    if first is not None:
      seed_from(first, wd)
    extra = [f"--config.seed={seed}", f"--config.teachers={ARMS[arm]}"]
    extra += (["--config.baseline.same_recipe=False"] if arm == "ensemble"
              else ["--config.baseline.enabled=False"])
    rep = run(wd, *extra)
    first = first or wd
    res[arm] = dict(figures(rep, "student"), best=figures(rep, "student_best"),
                    best_step=rep["student_best"].get("step"), teacher=figures(rep, "teacher"),
                    student_seconds=rep["wall_seconds"].get("student"))
    if arm == "ensemble":
      res["baseline_best"] = figures(rep, "baseline_best")
      out["teachers"] = {n: figures(rep, n) for n in rep["ensemble"]["members"]}
      out["teachers"]["ensemble"] = figures(rep, "teacher")
    log("RESULT", seed, arm, json.dumps(res[arm]))


def mean(arm, key, best=False):
  vals = [(r[arm]["best"] if best else r[arm])[key] for r in out["runs"].values()]
  return sum(vals) / len(vals)


out["mean"] = {arm: {k: mean(arm, k) for k in ("val_ce", "heldout_ce")}
               | {f"best_{k}": mean(arm, k, True) for k in ("val_ce", "heldout_ce")}
               for arm in ("A", "B", "ensemble")}
out["ensemble_best_of_three"] = {
    k: sum(r["ensemble"][k] < min(r["A"][k], r["B"][k]) for r in out["runs"].values())
    for k in ("val_ce", "heldout_ce")}
log("DONE", json.dumps(out))
print(json.dumps(out), flush=True)
