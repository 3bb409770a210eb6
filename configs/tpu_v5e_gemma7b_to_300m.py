"""Gemma-7B teacher -> ~310M student on a TPU v5e-256 pod slice (16x16 chips, 64 hosts).

Launch (creates the slice, installs, runs on every worker, streams logs, deletes):

  TPU_NAME=distill-v5e ZONE=us-west4-a ACCELERATOR=v5litepod-256 \\
  CONFIG=configs/tpu_v5e_gemma7b_to_300m.py WORKDIR=/mnt/shared/runs/gemma7b-300m \\
  EXTRA="--config.teacher.checkpoint=hf:/mnt/models/gemma-7b \\
         --config.data.tokenizer=/mnt/models/gemma-7b" launch/tpu_pod.sh

or by hand on every worker of an existing slice:

  python -m distill.main --config=configs/tpu_v5e_gemma7b_to_300m.py --workdir=... \\
      --config.teacher.checkpoint=hf:/path/to/gemma-7b --config.data.tokenizer=/path/to/gemma-7b

The shipped file leaves `teacher.checkpoint` empty (validation checks that a given path
exists) and states the teacher's full shape in `teacher.model`, so the memory check compiles
without weights:

  pip install libtpu && python -m distill.aot --config=configs/tpu_v5e_gemma7b_to_300m.py

Expected runtime: ~20k steps x 512k tokens at roughly 40% MFU of 256 x 197 TFLOP/s is about
10 h for the student plus the same again for the baseline (teacher forward ~3x the student's
training FLOPs per token dominates; set baseline.enabled=False to halve it). The checkpoint
`hf:` override is required: without it the pipeline would pretrain a 7B teacher from scratch.
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
  hw = presets.get("tpu_v5e")
  # Seeds parameter init, data order and sampling; stages derive their own streams from it.
  c.seed = 0
  # Hardware preset: bf16 activations, splash attention, remat (distill/presets.py).
  c.preset = hw.name
  # TPU topology this config is sized for: distill.aot compiles for it, launch/ creates it.
  c.topology = "v5e:16x16"
  # Mesh over (data, fsdp, tensor): weights split 16 ways (fsdp 4 x tensor 4). tensor=4 also
  # splits the 256k vocab of the loss's logits and (un)embeddings: with fsdp=16, tensor=1 the
  # step needs 16.7 GB of temporaries per chip (distill.aot) and does not fit; with 4 x 4 it
  # is ~5 GiB. data=-1 takes the rest (16 on v5e-256); any slice size that 16 divides works.
  # `slices` > 1 spans several slices over DCN (data axis only).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=4, tensor=4, slices=1))
  # Steps between checkpoints (orbax writes one checkpoint from all hosts).
  c.checkpoint_every = 500
  # Steps between progress lines / TensorBoard scalars (process 0 only).
  c.log_every = 50

  c.train = ml_collections.ConfigDict()
  # Skip a batch with a non-finite loss/gradient instead of stopping: a 10 h run should not
  # die on one bad batch.
  c.train.skip_nonfinite = True

  c.data = ml_collections.ConfigDict()
  # TFDS name or 'text:/path/*.txt'; lm1b downloads (~1.8 GB) and needs no Beam pipeline.
  c.data.name = "lm1b"
  # Where TFDS files and token caches go; '' = <workdir>/data. Use a shared disk or GCS.
  c.data.data_dir = ""
  # The teacher's tokenizer (directory with tokenizer.json / tokenizer.model). Required:
  # '' fails at start-up rather than silently tokenizing with bytes.
  c.data.tokenizer = ""
  # Tokens per training sequence.
  c.data.seq_len = 2048
  # Global batch in sequences: 256 x 2048 = 512k tokens per step (4 per data-parallel shard).
  c.data.batch_size = 256
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
  # Give `hf:/path/to/gemma-7b` on the command line (see docstring); '' would pretrain.
  c.teacher.checkpoint = ""
  # Teacher weights held in bf16 (read-only): 17 GB, 1.1 GB per chip over fsdp x tensor.
  c.teacher.dtype = "bfloat16"
  # Gemma-7B's shape (config.json of google/gemma-7b), so distill.aot compiles without weights.
  c.teacher.model = model(
      vocab_size=256000, d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256,
      d_ff=24576, mlp="geglu", norm_plus_one=True, embed_scale=True, tie_embeddings=True,
      rope_theta=10000.0, max_len=8192)
  c.teacher.pretrain = ml_collections.ConfigDict()
  # Only used when teacher.checkpoint is '' (not meant for this config; kept valid).
  c.teacher.pretrain.steps = 1
  # Peak learning rate for teacher pretraining.
  c.teacher.pretrain.lr = 3e-4

  c.student = ml_collections.ConfigDict()
  # ~310M parameters: 197M in the tied 256k x 768 embedding, 12 blocks of 9.4M.
  c.student.model = model(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=3072,
                          mlp="geglu", tie_embeddings=True, remat=hw.remat)
  # Random init: the student is narrower than the teacher, no layer can be copied.
  c.student.init = "random"

  c.distill = ml_collections.ConfigDict()
  # Student steps (~10B tokens at 512k tokens/step); the baseline gets the same.
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
  # Chunked loss: 512 positions at a time, so [batch, 2048, 256k] fp32 logits (2 GB per
  # sequence) are never held whole.
  c.distill.chunk_size = 512
  # Fraction of the train split the student and baseline see.
  c.distill.transfer_fraction = 1.0
  # Peak learning rate for the student and the baseline.
  c.distill.lr = 1e-3

  c.baseline = ml_collections.ConfigDict()
  # Same-size hard-label student for the gap-closed figure (doubles the run time).
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
  # A 310M student with a 256k vocab is too big for the watch preset; export off by default.
  c.export.enabled = False
  # Edge presets to export: phone, watch.
  c.export.presets = ("phone",)
  return c
