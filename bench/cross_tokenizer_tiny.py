"""Cross-tokenizer KD on the tiny pipeline: a byte-level student of a BPE teacher.

  python bench/cross_tokenizer_tiny.py --root=/tmp/xtok [--vocab=1000] [--seed=0] [extra flags]

Trains a byte-level BPE tokenizer (`tokenizers`, --vocab ids) on the embedded corpus, then runs
`distill.main --config=tiny` with it as the teacher's tokenizer (the teacher pretrains on BPE
tokens) and `--config.student.tokenizer=byte`: the distilled byte student and the hard-label
byte baseline (same shape, data, order, steps, seed) are compared in bits/byte. Export is off.
Prints one JSON line: bits/byte of every model on validation and on the held-out text.
"""
import json, os, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and
            a.split("=", 1)[0] in ("--root", "--vocab", "--seed"))
extra = [a for a in sys.argv[1:] if a.startswith("--config.")]
root, vocab = opts.get("root", "/tmp/xtok"), int(opts.get("vocab", 1000))
seed = opts.get("seed", "0")
tok_dir = os.path.join(root, f"bpe{vocab}")
if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
  from pydoc_data.topics import topics
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([topics[k] for k in sorted(topics)], trainers.BpeTrainer(
      vocab_size=vocab, special_tokens=["<|endoftext|>", "<pad>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  os.makedirs(tok_dir, exist_ok=True)
  tok.save(os.path.join(tok_dir, "tokenizer.json"))
  with open(os.path.join(tok_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|endoftext|>", "pad_token": "<pad>"}, f)
wd = os.path.join(root, f"seed{seed}")
cmd = [sys.executable, "-m", "distill.main", "--config=configs/tiny.py", f"--workdir={wd}",
       f"--config.data.tokenizer={os.path.join(tok_dir, 'tokenizer.json')}",
       "--config.student.tokenizer=byte", f"--config.seed={seed}",
       "--config.export.enabled=False", *extra]
t = time.time()
os.makedirs(root, exist_ok=True)
with open(wd + ".log", "a") as f:
  rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
with open(os.path.join(wd, "report.json")) as f:
  rep = json.load(f)
out = {"cmd": " ".join(cmd), "rc": rc, "wall_s": round(time.time() - t)}
for name in ("teacher", "student", "baseline", "student_best", "baseline_best"):
  if name in rep:
    out[name] = {"bits_per_byte": rep[name]["bits_per_byte"],
                 "heldout_bits_per_byte": rep[name].get("heldout", {}).get("bits_per_byte")}
out["gap_closed_bits_per_byte"] = rep.get("gap_closed")
print(json.dumps(out))
