"""Peak host memory of loading a ~1B-parameter HF checkpoint onto 8 sharded CPU devices.

  python bench/hf_load_memory.py [--dtype=bfloat16|float32] [--keep=DIR]

Writes a synthetic Llama-3.2-1B-shaped checkpoint (random weights, sharded safetensors with
model.safetensors.index.json) to a temp dir, then loads it with `distill.models.hf` in a fresh
process holding 8 fake CPU devices and a mesh with fsdp=8, and prints ONE JSON line:

  peak_rss_bytes       ru_maxrss of the loading process (includes the jax import baseline)
  baseline_rss_bytes   RSS after importing jax and building the mesh, before loading
  model_bytes          bytes of all loaded parameters (in the load dtype)
  largest_tensor_bytes the largest single parameter
  bound_bytes          1.25 * model_bytes + largest_tensor_bytes
  ratio                peak_rss_bytes / bound_bytes (<= 1 is the goal)

On CPU the "devices" live in host memory, so the loaded model itself is part of the RSS:
the bound allows the model, one extra tensor in flight and 25% slack for the runtime.
Needs about 2x the checkpoint size in free disk (2.5 GB for bf16) and ~4 GB of memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

# Llama 3.2 1B: 1.24B parameters with tied embeddings.
SHAPE = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, head_dim=64)
SHARD_BYTES = 500 << 20


def _tensors(dtype):
  """(name, shape) in file order; values are produced one tensor at a time."""
  s = SHAPE
  d, f, k = s["hidden_size"], s["intermediate_size"], s["head_dim"]
  n, m = s["num_attention_heads"], s["num_key_value_heads"]
  yield "model.embed_tokens.weight", (s["vocab_size"], d)
  for i in range(s["num_hidden_layers"]):
    p = f"model.layers.{i}."
    yield p + "input_layernorm.weight", (d,)
    yield p + "self_attn.q_proj.weight", (n * k, d)
    yield p + "self_attn.k_proj.weight", (m * k, d)
    yield p + "self_attn.v_proj.weight", (m * k, d)
    yield p + "self_attn.o_proj.weight", (d, n * k)
    yield p + "post_attention_layernorm.weight", (d,)
    yield p + "mlp.gate_proj.weight", (f, d)
    yield p + "mlp.up_proj.weight", (f, d)
    yield p + "mlp.down_proj.weight", (d, f)
  yield "model.norm.weight", (d,)


def write_checkpoint(out: str, dtype: str) -> int:
  """Sharded safetensors + index + config.json; holds at most one shard in memory."""
  import ml_dtypes
  from safetensors.numpy import save_file
  np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
  rng = np.random.default_rng(0)
  shard, shard_bytes, files, weight_map, total = {}, 0, [], {}, 0

  def flush():
    nonlocal shard, shard_bytes
    name = f"model-{len(files) + 1:05d}.safetensors"
    save_file(shard, os.path.join(out, name), metadata={"format": "pt"})
    files.append(name)
    weight_map.update({k: name for k in shard})
    shard, shard_bytes = {}, 0

  for name, shape in _tensors(dtype):
    x = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np_dtype)
    if shard and shard_bytes + x.nbytes > SHARD_BYTES:
      flush()
    shard[name] = x
    shard_bytes += x.nbytes
    total += x.nbytes
  flush()
  with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(dict(SHAPE, model_type="llama", architectures=["LlamaForCausalLM"],
                   tie_word_embeddings=True, rms_norm_eps=1e-5, torch_dtype=dtype,
                   max_position_embeddings=8192,
                   rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), f)
  return total


def load_and_measure(path: str, dtype: str) -> dict:
  """Runs in the child process: 8 fake CPU devices, fsdp=8 mesh, one load."""
  import jax
  import psutil
  from distill.models import sharding
  from distill.models import hf
  mesh = sharding.make_mesh(sharding.MeshSpec(data=1, fsdp=8, tensor=1))
  baseline = psutil.Process().memory_info().rss
  t0 = time.time()
  _, params, _ = hf.load(path, mesh, dtype, with_tokenizer=False)
  jax.block_until_ready(params)
  seconds = time.time() - t0
  leaves = jax.tree.leaves(params)
  model_bytes = sum(x.nbytes for x in leaves)
  largest = max(x.nbytes for x in leaves)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
  bound = 1.25 * model_bytes + largest
  embed = params["embed"]
  return {"bench": "hf_load_memory", "dtype": dtype, "devices": jax.device_count(),
          "mesh": dict(mesh.shape), "params": int(sum(x.size for x in leaves)),
          "peak_rss_bytes": int(peak), "baseline_rss_bytes": int(baseline),
          "model_bytes": int(model_bytes), "largest_tensor_bytes": int(largest),
          "bound_bytes": int(bound), "ratio": round(peak / bound, 3),
          "peak_minus_baseline_over_model": round((peak - baseline) / model_bytes, 3),
          "embed_shard_bytes": int(embed.addressable_shards[0].data.nbytes),
          "load_seconds": round(seconds, 1)}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--keep", default="", help="write the checkpoint here and keep it")
  parser.add_argument("--load", default="", help=argparse.SUPPRESS)  # child mode
  args = parser.parse_args()
  if args.load:
    print(json.dumps(load_and_measure(args.load, args.dtype)))
    return 0

  tmp = args.keep or tempfile.mkdtemp(prefix="hf_load_memory_")
  os.makedirs(tmp, exist_ok=True)
  try:
    t0 = time.time()
    file_bytes = write_checkpoint(tmp, args.dtype)
    write_s = time.time() - t0
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    # A fresh process, so the writer's memory is not in the loader's peak.
    child = subprocess.run([sys.executable, __file__, f"--load={tmp}", f"--dtype={args.dtype}"],
                           env=env, capture_output=True, text=True, check=False)
    if child.returncode:
      sys.stderr.write(child.stderr)
      return child.returncode
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(checkpoint_bytes=file_bytes, write_seconds=round(write_s, 1))
    from distill.run import precision  # pylint: disable=import-outside-toplevel
    result["precision"] = precision.record()  # the machine's policy (loads in --dtype)
    print(json.dumps(result))
    return 0
  finally:
    if not args.keep:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
