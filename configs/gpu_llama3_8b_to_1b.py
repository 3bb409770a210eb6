"""Llama-3-8B teacher -> ~1.2B student (Llama-3.2-1B shape) on one node of 8 x H100 80 GB.

Launch on a SLURM cluster (one task per GPU, jax.distributed auto-detected):

  CONFIG=configs/gpu_llama3_8b_to_1b.py WORKDIR=/shared/runs/llama3-8b-1b \\
  EXTRA="--config.teacher.checkpoint=hf:/models/Meta-Llama-3-8B \\
         --config.data.tokenizer=/models/Meta-Llama-3-8B" sbatch launch/slurm_gpu.sbatch

or on a single 8-GPU host (one process sees all 8 GPUs):

  python -m distill.main --config=configs/gpu_llama3_8b_to_1b.py --workdir=runs/llama3-8b-1b \\
      --config.teacher.checkpoint=hf:/path/to/Meta-Llama-3-8B \\
      --config.data.tokenizer=/path/to/Meta-Llama-3-8B

The shipped file leaves `teacher.checkpoint` empty (validation checks that a given path
exists) and states Llama-3-8B's full shape in `teacher.model`, so shapes, FLOPs and memory
can be worked out without the weights. The `hf:` override is required: without it the
pipeline would try to pretrain an 8B teacher.

Expected runtime: per step (64 x 2048 = 131k tokens) the teacher forward is ~2.1 PFLOP and
the student forward+backward ~1.0 PFLOP; at ~40% of 8 x 989 TFLOP/s (bf16 dense) that is
~1 s/step, so ~6 h for 20k steps (2.6B tokens) plus ~2 h for the hard-label baseline.
"""
from distill.cli.config_files import sibling
from distill.run import hardware as presets

base = sibling("base")


def get_config():
  c = base.get_config()
  hw = presets.get("gpu")
  # bf16 activations, cuDNN attention, remat (distill/presets.py).
  c.preset = hw.name
  # FSDP over the 8 NVLink-connected GPUs of a node; more nodes go on `data` (set
  # data=<nodes> or -1 with fsdp=8).
  c.mesh.data, c.mesh.fsdp = 1, 8
  c.checkpoint_every = 500
  c.log_every = 50
  # A 10 h run should not die on one bad batch.
  c.train.skip_nonfinite = True

  c.data.name = "lm1b"
  # The teacher's tokenizer (the HF model directory). Required: '' fails at start-up.
  c.data.tokenizer = ""
  c.data.seq_len = 2048
  # 8 sequences per GPU: 131k tokens per step.
  c.data.batch_size = 64
  c.data.eval_batches = 50

  c.optimizer.warmup_steps = 1000
  c.optimizer.weight_decay = 0.1

  # Give `hf:/path/to/Meta-Llama-3-8B` on the command line (see docstring); '' would pretrain.
  c.teacher.checkpoint = ""
  # bf16 weights (read-only): 16 GB, 2 GB per GPU over fsdp=8.
  c.teacher.dtype = "bfloat16"
  # Meta-Llama-3-8B's shape (its config.json): GQA 32/8 heads, SwiGLU, untied embeddings.
  c.teacher.model = base.model(
      vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
      rope_theta=500000.0, tie_embeddings=False, norm_eps=1e-5, max_len=8192)
  # Only used when teacher.checkpoint is '' (not meant for this config; kept valid).
  c.teacher.pretrain.steps = 1
  c.teacher.pretrain.lr = 3e-4

  # Llama-3.2-1B's shape: 1.24B parameters, 263M of them in the tied 128k x 2048 embedding.
  # Random init: the student is narrower than the teacher, no layer can be copied.
  c.student.model = base.model(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                               rope_theta=500000.0, tie_embeddings=True, norm_eps=1e-5,
                               remat=hw.remat)

  # 2.6B tokens of student steps; the baseline gets the same.
  c.distill.steps = 20000
  c.distill.temperature = 1.0
  c.distill.alpha = 0.1
  # 256 positions at a time, so [8, 2048, 128k] fp32 logits (8.4 GB per GPU) are never whole.
  c.distill.chunk_size = 256
  c.distill.transfer_fraction = 1.0
  c.distill.lr = 6e-4
  c.baseline.lr = 6e-4  # the student's, until a dev-split sweep chooses its own

  c.eval.prompts = ("The capital of France is", "In machine learning, distillation")
  # A 1.2B student is a phone model at most.
  c.export.enabled = False
  c.export.presets = ("phone",)
  return c
