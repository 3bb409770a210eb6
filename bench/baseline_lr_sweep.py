"""The baseline learning-rate sweep of docs/results/baselines.md, as one driver.

  python bench/baseline_lr_sweep.py --root=/tmp/sweep tiny watch phone

Per config, seed 0: the base run (student + baseline at the student's rate), one baseline per
rate from a copy of the base workdir (finished stages are skipped, so only the baseline trains),
the rate with the lowest best dev CE (one more rate beyond the grid's edge when it wins there),
then the tuned seed-0 run (same-recipe and more-labels stages) and seed 1 at that rate. Export is
off. Prints one JSON line per config: {config, dev CE per rate, chosen rate}.
"""
import json, os, shutil, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
args = [a for a in sys.argv[1:] if not a.startswith("--root=")]
ROOT = next((a[7:] for a in sys.argv[1:] if a.startswith("--root=")), "/tmp/baseline_sweep")
os.makedirs(ROOT, exist_ok=True)
LOG = open(os.path.join(ROOT, "sweep.log"), "a", buffering=1)

def log(*a):
  print(time.strftime("%H:%M:%S"), *a, file=LOG)

def run(cfg, wd, *extra):
  cmd = [sys.executable, "-m", "distill.main", f"--config={cfg}", f"--workdir={wd}",
         "--config.export.enabled=False", *extra]
  log("RUN", " ".join(cmd))
  t = time.time()
  with open(wd + ".log", "a") as f:
    rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  log("rc", rc, "in", round(time.time() - t), "s", wd)
  return rc

def copy_base(base, dst, drop=("baseline", "baseline_same_recipe", "baseline_more_labels")):
  if os.path.exists(os.path.join(dst, ".copied")):
    return
  shutil.rmtree(dst, ignore_errors=True)
  os.makedirs(dst)
  for n in os.listdir(base):
    if n in drop or n.startswith("report") or n in ("export", "plots") or n.endswith(".lock"):
      continue
    s, d = os.path.join(base, n), os.path.join(dst, n)
    if os.path.isdir(s): shutil.copytree(s, d, symlinks=True)
    else: shutil.copy2(s, d)
  open(os.path.join(dst, ".copied"), "w").close()

def dev_best(wd, stage="baseline"):
  with open(os.path.join(wd, stage, "stage.json")) as f:
    return json.load(f)["best"]["dev_loss"]

def sweep(name, cfg, grid, extend):
  base = f"{ROOT}/{name}_s0_base"
  if run(cfg, base): return
  res = {3e-3: dev_best(base)}  # base baseline.lr default = distill.lr = 3e-3
  dirs = {3e-3: base}
  def one(lr):
    wd = f"{ROOT}/{name}_s0_lr{lr:g}"
    copy_base(base, wd)
    if run(cfg, wd, f"--config.baseline.lr={lr}", "--config.baseline.same_recipe=False",
           "--config.eval.sample_prompts=0"): return
    res[lr] = dev_best(wd); dirs[lr] = wd
    log("SWEEP", name, lr, res[lr])
  for lr in grid: one(lr)
  lrs = sorted(res)
  best = min(res, key=res.get)
  if best == lrs[0] and extend[0] not in res: one(extend[0])
  if best == lrs[-1] and extend[1] not in res: one(extend[1])
  best = min(res, key=res.get)
  log("CHOSEN", name, best, json.dumps({str(k): v for k, v in sorted(res.items())}))
  print(json.dumps({"config": cfg, "dev_ce": {f"{k:g}": v for k, v in sorted(res.items())},
                    "chosen": best}), flush=True)
  # seed 0 final: tuned baseline + same-recipe (base's baseline at 3e-3) + more labels
  fin = f"{ROOT}/{name}_s0_final"
  if not os.path.exists(fin):
    copy_base(base, fin)
    if best != 3e-3:
      shutil.copytree(os.path.join(dirs[best], "baseline"), os.path.join(fin, "baseline"))
      shutil.copytree(os.path.join(base, "baseline"), os.path.join(fin, "baseline_same_recipe"))
    else:
      shutil.copytree(os.path.join(base, "baseline"), os.path.join(fin, "baseline"))
  run(cfg, fin, f"--config.baseline.lr={best}", "--config.baseline.more_labels=True")
  run(cfg, f"{ROOT}/{name}_s1_final", "--config.seed=1", f"--config.baseline.lr={best}",
      "--config.baseline.more_labels=True")

which = args or ["tiny", "watch", "phone"]
for name in which:
  if name == "tiny":
    sweep("tiny", "configs/tiny.py", [3e-4, 1e-3, 1e-2], (1e-4, 3e-2))
  else:
    sweep(name, f"configs/smollm2_135m.py:{name}", [3e-4, 1e-3], (1e-4, 1e-2))
log("ALL DONE", which)
