"""Shapes for bench/step_throughput.py: one distill step big enough to time on a CPU.

  python bench/step_throughput.py --config=configs/bench_small.py

About 40M-parameter teacher and 8M student at seq 256 (the same byte vocabulary as
configs/tiny.py), random params and a random batch: no data, no checkpoints. On 2 shared
CPU cores one step takes a few seconds; on an accelerator raise `batch_size`.
"""
import ml_collections

from distill.cli.config_files import sibling
from distill.run import hardware as presets

base = sibling("base")


def get_config():
  c = ml_collections.ConfigDict()
  # Seeds the random params and batch.
  c.seed = 0
  # Mesh over (data, fsdp, tensor) as in the pipeline; -1 = every device on that axis;
  # slices: multi-slice TPU count (1 here).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, slices=1))
  # Compute dtype of both models (matmul inputs and activations; fp32 accumulation, norms,
  # softmax, loss and the student's master weights + optimizer state whatever it is): the cpu
  # preset's, "auto" = what distill/run/precision.py picks for this CPU (bfloat16 where it
  # multiplies bf16 natively and faster, else float32); or float32 / bfloat16.
  c.dtype = presets.get("cpu").dtype
  # Dtype the read-only teacher weights are held in (what config.teacher.dtype does; "auto"
  # as above); the teacher computes in it unless it is float32.
  c.teacher_dtype = presets.get("cpu").teacher_dtype
  # Vocabulary: 256 bytes + specials padded to a multiple of 8, as the byte tokenizer gives.
  c.vocab_size = 264
  # Tokens per sequence.
  c.seq_len = 256
  # Sequences per step (global).
  c.batch_size = 4
  # Teacher: 12 x 512 wide, GQA 8/4 heads, SwiGLU 1664 -> ~40M params.
  c.teacher = base.model(d_model=512, n_layers=12, n_heads=8, n_kv_heads=4, d_ff=1664)
  # Student: 8 x 256 wide, GQA 4/2 heads, SwiGLU 768 -> ~8M params (tied embeddings).
  c.student = base.model(d_model=256, n_layers=8, n_heads=4, n_kv_heads=2, d_ff=1024)
  # Soft-target objective, as config.distill in the pipeline configs.
  c.distill = ml_collections.ConfigDict()
  # Divergence kind (see distill/losses/).
  c.distill.loss = "forward_kl"
  # Softmax temperature on both sides.
  c.distill.temperature = 2.0
  # Hard-label CE weight.
  c.distill.alpha = 0.0
  # JSD / skew mixing weights (unused by forward_kl, required by LossConfig).
  c.distill.beta = 0.5
  c.distill.skew = 0.1
  # Multiply the divergence by T^2.
  c.distill.scale_by_t2 = True
  # Schedule length for alpha/T schedules (constant here; LossConfig reads it).
  c.distill.steps = 1000
  # Positions per block in the chunked loss; 0 = dense logits (small vocab: dense is cheaper).
  c.distill.chunk_size = 0
  # Timing: untimed warmup calls (--breakdown), then timed rounds; each round runs the JAX
  # step and the two PyTorch loops once, in turn (medians are reported).
  c.warmup = 1
  c.repeats = 10
  # Side of the square f32 matmul whose rate is taken as this machine's peak.
  c.peak_matmul = 2048
  return c
