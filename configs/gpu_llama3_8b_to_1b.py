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
import ml_collections

from distill import presets


def model(**fields):
  m = ml_collections.ConfigDict()
  for k, v in fields.items():
    setattr(m, k, v)
  return m


def get_config():
  c = ml_collections.ConfigDict()
  hw = presets.get("gpu")
  # Seeds parameter init, data order and sampling; stages derive their own streams from it.
  c.seed = 0
  # Hardware preset: bf16 activations, cuDNN attention, remat (distill/presets.py).
  c.preset = hw.name
  # Mesh over (data, fsdp, tensor): FSDP over the 8 NVLink-connected GPUs of a node; more
  # nodes go on `data` (set data=<nodes> or -1 with fsdp=8).
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=8, tensor=1))
  # Steps between checkpoints (orbax writes one checkpoint from all processes).
  c.checkpoint_every = 500
  # Steps between progress lines / TensorBoard scalars (process 0 only).
  c.log_every = 50

  c.train = ml_collections.ConfigDict()
  # Skip a batch with a non-finite loss/gradient instead of stopping the run.
  c.train.skip_nonfinite = True

  c.data = ml_collections.ConfigDict()
  # TFDS name or 'text:/path/*.txt'; lm1b downloads (~1.8 GB) and needs no Beam pipeline.
  c.data.name = "lm1b"
  # Where TFDS files and token caches go; '' = <workdir>/data (a shared disk on SLURM).
  c.data.data_dir = ""
  # The teacher's tokenizer (the HF model directory). Required: '' fails at start-up.
  c.data.tokenizer = ""
  # Tokens per training sequence.
  c.data.seq_len = 2048
  # Global batch in sequences (8 per GPU): 131k tokens per step.
  c.data.batch_size = 64
  # Validation batches for evaluation.
  c.data.eval_batches = 50

  c.optimizer = ml_collections.ConfigDict()
  # Peak AdamW learning rate (teacher pretraining only; distill.lr is the student's).
  c.optimizer.lr = 3e-4
  # Linear warmup steps.
  c.optimizer.warmup_steps = 1000
  # Decoupled weight decay.
  c.optimizer.weight_decay = 0.1
  # Global gradient-norm clip.
  c.optimizer.clip_norm = 1.0

  c.teacher = ml_collections.ConfigDict()
  # Give `hf:/path/to/Meta-Llama-3-8B` on the command line (see docstring); '' would pretrain.
  c.teacher.checkpoint = ""
  # Teacher weights held in bf16 (read-only): 16 GB, 2 GB per GPU over fsdp=8.
  c.teacher.dtype = "bfloat16"
  # Meta-Llama-3-8B's shape (its config.json): GQA 32/8 heads, SwiGLU, untied embeddings.
  c.teacher.model = model(
      vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
      rope_theta=500000.0, tie_embeddings=False, norm_eps=1e-5, max_len=8192)
  c.teacher.pretrain = ml_collections.ConfigDict()
  # Only used when teacher.checkpoint is '' (not meant for this config; kept valid).
  c.teacher.pretrain.steps = 1
  # Peak learning rate for teacher pretraining.
  c.teacher.pretrain.lr = 3e-4

  c.student = ml_collections.ConfigDict()
  # Llama-3.2-1B's shape: 1.24B parameters, 263M of them in the tied 128k x 2048 embedding.
  c.student.model = model(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                          rope_theta=500000.0, tie_embeddings=True, norm_eps=1e-5,
                          remat=hw.remat)
  # Random init: the student is narrower than the teacher, no layer can be copied.
  c.student.init = "random"

  c.distill = ml_collections.ConfigDict()
  # Student steps (2.6B tokens); the baseline gets the same.
  c.distill.steps = 20000
  # Divergence: forward_kl | reverse_kl | jsd | tvd | skew_forward_kl | skew_reverse_kl.
  c.distill.loss = "forward_kl"
  # Softmax temperature on both sides.
  c.distill.temperature = 1.0
  # Weight of hard-label cross-entropy.
  c.distill.alpha = 0.1
  # Multiply the divergence by T^2 (Hinton et al.).
  c.distill.scale_by_t2 = True
  # JSD / skew-KL mixing weights (unused by forward_kl).
  c.distill.beta = 0.5
  c.distill.skew = 0.1
  # Chunked loss: 256 positions at a time, so [8, 2048, 128k] fp32 logits (8.4 GB per GPU)
  # are never held whole.
  c.distill.chunk_size = 256
  # Fraction of the train split the student and baseline see.
  c.distill.transfer_fraction = 1.0
  # Peak learning rate for the student and the baseline.
  c.distill.lr = 6e-4

  c.baseline = ml_collections.ConfigDict()
  # Same-size hard-label student for the gap-closed figure.
  c.baseline.enabled = True

  c.eval = ml_collections.ConfigDict()
  # Prompts for the sample generations in the report.
  c.eval.prompts = ("The capital of France is", "In machine learning, distillation")
  # New tokens per sample.
  c.eval.sample_tokens = 64
  # Prompts sent as a user turn through the tokenizer's chat template (instruct teachers only).
  c.eval.chat_prompts = ()
  # Second evaluation text no stage trains on ('docs': the project's docs; '' for none).
  c.eval.heldout = "docs"

  c.export = ml_collections.ConfigDict()
  # A 1.2B student is a phone model at most (int8/int4 quantization in the phone preset).
  c.export.enabled = False
  # Edge presets to export: phone, watch.
  c.export.presets = ("phone",)
  return c
