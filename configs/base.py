"""Every config field, stated once with what it means. Other configs start here.

  from configs import base
  def get_config():
    c = base.get_config()
    c.distill.steps = 1000   # only what differs
    return c

The values are the tiny CPU run's (configs/tiny.py is this file unchanged); the accelerator
configs override shapes, mesh, data and steps. Code reads every field directly (no defaults
in distill/), so a field added here is the one place to document it.
"""
import ml_collections


def model(d_model, n_layers, n_heads, n_kv_heads, d_ff, **extra):
  """A transformer shape; `extra` sets further distill.models.transformer.ModelConfig fields
  (vocab_size, norm, pos, mlp, tie_embeddings, rope_theta, remat, ...)."""
  m = ml_collections.ConfigDict()
  m.d_model = d_model
  m.n_layers = n_layers
  m.n_heads = n_heads
  m.n_kv_heads = n_kv_heads
  m.d_ff = d_ff
  # Per-head width; 0 = d_model // n_heads (a pruned student keeps its teacher's).
  m.head_dim = 0
  for k, v in extra.items():
    m[k] = v
  return m


def get_config():
  c = ml_collections.ConfigDict()
  # Seeds parameter init, data order and sampling; stages derive their own streams from it.
  c.seed = 0
  # Hardware preset: cpu | gpu | tpu_v4 | tpu_v5e | tpu_v5p | tpu_v6e (dtypes, attention,
  # remat, default mesh, HBM per chip; the table is distill/run/hardware.py).
  c.preset = "cpu"
  # Compute dtype of both models (matmul inputs, activations between layers): '' = the
  # preset's: bfloat16 on accelerators; on the cpu preset 'auto', i.e. bfloat16 only where
  # this CPU multiplies bf16 natively and a short GEMM probe (cached per machine) finds it
  # faster than fp32, else float32 (distill/run/precision.py; the run's first line says which
  # and why). 'auto', float32, bfloat16 or float16 set it explicitly (float32 for the fp32
  # reference run). Matmuls accumulate in fp32; norms, softmax, losses, the student's master
  # weights and the optimizer stay fp32 whatever this says.
  c.compute_dtype = ""
  # TPU topology the config is sized for (distill.aot compiles for it, launch/ creates it);
  # '' = the preset's default.
  c.topology = ""
  # Mesh shape over (data, fsdp, tensor); exactly one entry may be -1 (= all remaining devices).
  # `slices` > 1 spans several TPU slices over the data-center network (data axis only).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, slices=1))
  # Steps between checkpoints (and resume points) in every training stage; every process
  # writes its shards of one orbax checkpoint.
  c.checkpoint_every = 100
  # Steps between progress lines / TensorBoard scalars (process 0 only).
  c.log_every = 25

  c.train = ml_collections.ConfigDict()
  # On a non-finite loss/gradient: False stops the run (last good checkpoint kept); True skips
  # the batch and goes on.
  c.train.skip_nonfinite = False
  # Steps between dev-split losses (metrics.jsonl `dev_loss`) in the student and baseline
  # stages; the last step always has one. The dev split is data.dev_fraction of the train
  # split, which no stage trains on. 0 = none (then select_best must be False).
  c.train.dev_every = 25
  # Keep each of those stages' params at its lowest dev loss (<stage>/best/) and report that
  # checkpoint beside the last step (report `<stage>_best`, with its step): early stopping,
  # chosen on the dev split, never on the validation split the report's figures come from.
  # Gap closed is taken between the best checkpoints; the exported student is the last step.
  c.train.select_best = True

  c.data = ml_collections.ConfigDict()
  # TFDS name ('pydoc_topics' is built from the stdlib docs; 'lm1b' downloads ~1.8 GB),
  # 'text:/path/*.txt' (one document per file, packed), or a table of examples read with
  # `datasets` (local files only; one example per row, never packed): 'json:/path/*.jsonl',
  # 'parquet:/path/*.parquet' or 'hf_disk:/path/dir' (a save_to_disk directory). A table's
  # columns give its form: text | prompt + completion | messages | prompt (prompt-only); only
  # completions and assistant turns are trained (docs/guides/your_data.md).
  c.data.name = "pydoc_topics"
  # A table's validation split as another table of the same kind ('json:/path/dev.jsonl');
  # '' = rows whose md5(JSON) % 10 == 0 (or a save_to_disk DatasetDict's own split).
  c.data.validation_name = ""
  # A table's column names for the form fields, where they differ ('' = the field's own name),
  # e.g. --config.data.columns.prompt=question --config.data.columns.completion=answer.
  c.data.columns = ml_collections.ConfigDict(dict(text="", prompt="", completion="",
                                                  messages=""))
  # Where TFDS files and token caches go; '' = <workdir>/data (never inside the repo; a shared
  # disk or GCS for multi-host runs).
  c.data.data_dir = ""
  # Tokenizer: 'byte', a path to tokenizer.json / tokenizer.model / an HF model directory, or
  # '' = the teacher checkpoint's own (hf: and gguf: teachers).
  c.data.tokenizer = "byte"
  # Tokens per training sequence.
  c.data.seq_len = 128
  # Global batch size in sequences (divisible by the data-parallel size data x fsdp).
  c.data.batch_size = 32
  # Validation batches for evaluation, and dev batches per dev loss (0 = the whole split).
  c.data.eval_batches = 0
  # Share of the train split's windows held out as the dev split (a fixed choice, whatever
  # the seed): no stage trains on it, not the teacher's pretraining nor baseline.more_labels;
  # it selects checkpoints (train.select_best) and learning rates. 0 = no dev split.
  c.data.dev_fraction = 0.05
  # Start-of-sequence convention, kept from data to device: "true" puts BOS before every
  # document when packing (its EOS always follows), and then `distill.load(...).generate`,
  # the model card and the .litertlm bundle (its start token) put BOS before every prompt;
  # "false" never does; "auto" follows the tokenizer: the teacher's own flag for HF/GGUF
  # teachers (add_bos_token), BOS for SentencePiece, none for the byte tokenizer.
  c.data.add_bos = "auto"
  # Read at most this many documents per split (None = all; caps huge TFDS corpora). An int
  # placeholder, so `--config.data.max_documents=100000` can set it.
  c.data.max_documents = ml_collections.config_dict.placeholder(int)
  # The built-in task when data.name is 'task:addition' (distill/data/tasks.py): "12+345=" ->
  # "357", rows per split (train / dev = the validation split / test = read only by
  # eval.task), each operand's digits uniform in [min_digits, max_digits], and the task's own
  # seed (not the run's, so every seed of an experiment sees the same rows). The splits are
  # disjoint by construction; the files go to <data_dir>/tasks/. reverse=True writes each
  # answer least significant digit first ("12+345=" -> "753"), the order carries arise in;
  # pad=True zero-pads every operand to max_digits and every answer to max_digits + 1
  # ("0012+0345=" -> "00357"), so each digit has the same position in every row.
  c.data.task = ml_collections.ConfigDict(dict(train=20000, dev=500, test=1000, min_digits=1,
                                               max_digits=4, seed=0, reverse=False, pad=False))

  c.optimizer = ml_collections.ConfigDict()
  # AdamW for every stage: linear warmup to the stage's peak learning rate
  # (teacher.pretrain.lr, distill.lr), cosine decay to 10% at the end.
  c.optimizer.warmup_steps = 20
  # Decoupled weight decay.
  c.optimizer.weight_decay = 0.0
  # Global gradient-norm clip.
  c.optimizer.clip_norm = 1.0

  c.teacher = ml_collections.ConfigDict()
  # Path of a teacher stage directory (orbax), 'hf:/path' (Hugging Face safetensors),
  # 'gguf:/path/model.gguf', or '' to pretrain one here.
  c.teacher.checkpoint = ""
  # Dtype the teacher's weights are held in (read-only): '' = compute_dtype when that is set,
  # else the preset's (on the cpu preset the same 'auto' choice), or auto, float32, bfloat16,
  # float16. A non-fp32 teacher also computes in it (fp32 accumulation, norms and softmax).
  c.teacher.dtype = ""
  # Teacher shape when pretrained here; a checkpoint brings its own (a config may still state
  # it, with vocab_size, so distill.aot can compile without the weights).
  c.teacher.model = model(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384)
  c.teacher.pretrain = ml_collections.ConfigDict()
  # Pretraining steps on the full train split (when teacher.checkpoint is empty).
  c.teacher.pretrain.steps = 300
  # Peak learning rate for teacher pretraining.
  c.teacher.pretrain.lr = 3e-3

  # An ensemble of teachers in place of the single one above: a tuple of dicts, each
  # {seed: int, weight: float} (a teacher pretrained here exactly as the single one is, with
  # teacher.model and teacher.pretrain but its own seed, in stage <workdir>/teacher_seed<seed>/)
  # or {checkpoint: a stage dir | 'hf:/path' | 'gguf:/path', weight: float} (loaded as
  # teacher.checkpoint is, in teacher.dtype). weight defaults to 1.0; the weights must be
  # finite, >= 0 and sum to a positive number. All teachers must speak one tokenizer and
  # vocabulary. The soft target is P_ens = sum_i w_i p_i / sum_i w_i at T = 1, then tempered by
  # distill.temperature as any teacher's (distill/methods/ensemble.py), online or through the
  # teacher cache; the report's `teacher` row is the ensemble, one `teacher_seed<N>` (or
  # `teacher_<i>` for a checkpoint) row per member. One entry = that teacher alone (trains
  # exactly as the single teacher with teacher seed = seed). () = the single teacher above. E.g.
  # --config.teachers="({'seed': 0, 'weight': 1.0}, {'seed': 1, 'weight': 1.0})".
  c.teachers = ()

  c.student = ml_collections.ConfigDict()
  # Student shape (shared by the distilled student and the baseline).
  c.student.model = model(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192)
  # 'random', 'teacher_layers' to copy every k-th teacher layer where shapes allow, or
  # 'prune' to cut the shape above out of the teacher (Minitron; keeps the teacher's head_dim).
  # The baseline starts from the same init when it is 'prune'.
  c.student.init = "random"
  c.student.prune = ml_collections.ConfigDict()
  # 'activation': keep the units with the largest mean activations on calibration batches of
  # the transfer set; 'random': keep a random choice of the same size (the control).
  c.student.prune.method = "activation"
  # Transfer-set batches (data.batch_size each) for the importance pass.
  c.student.prune.calib_batches = 8
  # Rescale each kept norm by rms(kept channels) / rms(all channels) from the calibration
  # batches (`prune.core.norm_gains`). Off: on SmolLM2 it helped a d_model 576 -> 384 cut
  # before training (7.15 -> 6.43 nats) but hurt 576 -> 320 and 256 (8.76 -> 10.32, 11.14 -> 13.29).
  c.student.prune.norm_gains = False
  # Vocabulary trimming: K > 0 keeps the K most frequent ids of the transfer set plus every
  # special and byte-fallback token (the student's own tokenizer, ids remapped); the teacher's
  # mass on dropped ids goes to the tail bucket. Needs teacher_source='cache'. 0 = no trim.
  c.student.vocab = 0
  # The student's own tokenizer when it differs from the teacher's (cross-tokenizer
  # distillation: positions aligned by byte offsets, distill/data/alignment.py): 'byte', a
  # tokenizer path as for data.tokenizer, or '' = the teacher's (data.tokenizer). Online
  # teacher, random init; every model is compared in bits/byte.
  c.student.tokenizer = ""

  c.distill = ml_collections.ConfigDict()
  # Student training steps (the baseline gets the same).
  c.distill.steps = 250
  # Divergence: forward_kl | reverse_kl | jsd | tvd | skew_forward_kl | skew_reverse_kl.
  c.distill.loss = "forward_kl"
  # Softmax temperature on both sides.
  c.distill.temperature = 2.0
  # Weight of hard-label cross-entropy: loss = (1 - alpha) * divergence + alpha * CE.
  c.distill.alpha = 0.0
  # Schedules for alpha and T over the distill steps: constant | linear | cosine, from the
  # values above to the *_end values.
  c.distill.alpha_schedule = "constant"
  c.distill.alpha_end = 0.0
  c.distill.temperature_schedule = "constant"
  c.distill.temperature_end = 1.0
  # Multiply the divergence by T^2 (Hinton et al.) so gradient scale is T-independent.
  c.distill.scale_by_t2 = True
  # JSD mixing weight and skew-KL mixing weight (unused by the other divergences).
  c.distill.beta = 0.5
  c.distill.skew = 0.1
  # Where soft targets come from: 'online' (teacher forward in the step), 'cache' (the
  # pipeline writes the teacher's top-k once to <workdir>/teacher_cache and trains from it:
  # one teacher forward per token instead of one per step) or 'cache:/path' (written by
  # `python -m distill.teacher_cache`).
  c.distill.teacher_source = "online"
  # Keep only the teacher's top-k tokens per position (0 = full distribution); a cache implies k.
  c.distill.top_k = 0
  # Missing teacher mass with top-k targets: 'renormalize' both sides over the k ids, or
  # 'tail_bucket' (student keeps its full distribution; the teacher's rest goes to one bucket).
  c.distill.tail = "renormalize"
  # Positions per block in the chunked loss; 0 = dense logits. Large vocabularies need it:
  # [batch, seq, vocab] fp32 logits are then never held whole.
  c.distill.chunk_size = 0
  # Cross-tokenizer distillation (student.tokenizer set): weight of ULD's distance between
  # the sorted probability vectors at aligned positions whose next tokens differ (the exact
  # divergence is taken where they coincide; docs/architecture.md).
  c.distill.uld_weight = 1.0
  # Fraction of the train split the student and baseline see (the transfer set).
  c.distill.transfer_fraction = 0.1
  # '' = the transfer set above; 'generated:DIR' = teacher generations written by
  # `python -m distill.teacher_cache --generate` (SeqKD; the student trains on them, alpha=1
  # for hard labels only; the baseline keeps the transfer set above).
  c.distill.transfer_set = ""
  # Peak learning rate for the student and the baseline.
  c.distill.lr = 3e-3
  c.distill.hidden = ml_collections.ConfigDict()
  # Hidden-state distillation (distill/features.py): '' off, 'auto' (each student block with
  # the teacher block pruning kept for it, else evenly spaced ones), or pairs '0:1,1:3'
  # (student block:teacher block). Needs teacher_source='online'.
  c.distill.hidden.layers = ""
  # Weight of the mean feature loss added to the objective (0 = off).
  c.distill.hidden.weight = 0.0
  # 'mse' or 'cosine' between the projected student state and the teacher's.
  c.distill.hidden.kind = "mse"
  # Attention transfer over the same block pairs: weight of the KL between the teacher's and
  # the student's attention maps (averaged over heads; needs the einsum attention, no remat).
  c.distill.hidden.attention_weight = 0.0
  # Quantization-aware distillation: none | int8 | int4_block32 | int4_block32_head8 (for the
  # int4_head8 export: int8 unembedding) fake-quantizes the student's weights as that export will (straight-through gradients; distill/qat.py), from the
  # fraction qat_start_fraction of the steps on (0 = all steps, 0.8 = the last 20%).
  c.distill.qat = "none"
  c.distill.qat_start_fraction = 0.0
  # With qat: also round every fully connected op's input per token to int8 (asymmetric), as
  # the dynamic-range kernels of the int8/int4 files do on the device.
  c.distill.qat_activations = False
  # QAD as a stage of its own (0 = off; then qat_start_fraction applies): the student first
  # trains all distill.steps in full precision (stage student_fp32), then a copy of it trains
  # qat_steps more steps with `qat` fake-quantized weights against that fp32 student as its
  # teacher (stage student: the one evaluated and exported), so the quantized model learns to
  # match its own unquantized self (NVIDIA's QAD recipe).
  c.distill.qat_steps = 0
  # Peak learning rate of that stage (warmup and cosine decay as every stage, over qat_steps).
  c.distill.qat_lr = 1e-3
  # That stage first picks the fp32 student's qat_outliers residual-stream channels with the
  # largest values (relative to their token's RMS, on 4 training batches); every d_model-input
  # matmul computes them apart in fp32, so the int8/int4 files' per-token int8 rounding of
  # activations spans the other channels only (ModelConfig.outlier_channels). 0 = off.
  c.distill.qat_outliers = 8
  c.distill.on_policy = ml_collections.ConfigDict()
  # On-policy distillation (GKD; distill/onpolicy.py): share λ of the steps whose sequences the
  # student samples itself (the rest are dataset batches); each step decides from
  # fold_in(seed, step). 0 = off (plain off-policy KD). Needs a teacher that runs:
  # teacher_source='online', or 'cache' (dataset steps read the cache, sampled steps run it).
  c.distill.on_policy.fraction = 0.0
  # Prompt tokens taken from the start of each dataset row; the student continues them.
  c.distill.on_policy.prompt_len = 32
  # Tokens the student samples per row; 0 = fill the training window (seq_len + 1 - prompt_len)
  # so an on-policy step trains on as many tokens as a dataset step.
  c.distill.on_policy.gen_len = 0
  # Sampling temperature (0 = greedy), top-k (0 = off) and top-p (1 = off) of the student.
  c.distill.on_policy.temperature = 1.0
  c.distill.on_policy.top_k = 0
  c.distill.on_policy.top_p = 1.0
  # Divergence on the sampled positions (any distill.loss kind; GKD: reverse_kl or jsd with
  # distill.beta). Dataset steps keep distill.loss; sampled steps use no hard-label term.
  c.distill.on_policy.divergence = "reverse_kl"
  # Softmax temperature of that divergence; 0 = distill.temperature (the dataset steps'). TRL's
  # GKD takes it at the sampling temperature, so the student matches the teacher on the same
  # distribution it samples from.
  c.distill.on_policy.loss_temperature = 0.0
  # Warm start, in [0, 1): the first `start` fraction of the distill steps are all off-policy
  # (dataset batches, distill.loss); λ applies to the steps after it. GKD starts on-policy
  # training from a supervised student, not from random weights. 0 = on-policy from step 0.
  c.distill.on_policy.start = 0.0

  c.baseline = ml_collections.ConfigDict()
  # Train a same-size hard-label student with the same data, steps and seed, for the
  # gap-closed figure (doubles the training time).
  c.baseline.enabled = True
  # Peak learning rate of the hard-label baselines (warmup and cosine decay as every stage):
  # their own, since a KD gain over a baseline run at the student's rate is no KD gain when
  # that rate wrecks the baseline. Each shipped config states the value a sweep on the dev split
  # (data.dev_fraction, never validation) chose: docs/results/baselines.md.
  c.baseline.lr = 3e-3
  # When baseline.lr differs from distill.lr: also train the baseline at the student's rate
  # (stage baseline_same_recipe, last step), so the report keeps the old same-recipe gap
  # closed beside the tuned one. False saves that stage's training time.
  c.baseline.same_recipe = True
  # Also train the "more labels" reference (stage baseline_more_labels): the baseline on the
  # whole train split (less the dev split) instead of the transfer set, same steps and rate,
  # so the report shows what distillation buys against simply labelling more data.
  c.baseline.more_labels = False

  c.eval = ml_collections.ConfigDict()
  # Prompts for the sample generations in the report.
  c.eval.prompts = ("The for statement", "Exceptions are")
  # New tokens per sample.
  c.eval.sample_tokens = 64
  # Prompts sent as a user turn through the tokenizer's chat template (instruct teachers only).
  c.eval.chat_prompts = ()
  # Second evaluation text no stage trains on: 'docs' (the project's docs, shipped frozen in
  # distill/datasets/heldout_docs.md), 'text:/glob/*.txt', or '' for none.
  c.eval.heldout = "docs"
  # Sample metrics for every model (report.json sample_teacher_nll, sample_repeat_rate, lengths):
  # the first sample_prompt_len tokens of the first sample_prompts validation windows are
  # continued by sample_gen_len tokens at sample_temperature, same key for every model, and
  # the teacher scores them. sample_prompts = 0 turns them off.
  c.eval.sample_prompts = 32
  c.eval.sample_prompt_len = 32
  c.eval.sample_gen_len = 96
  c.eval.sample_temperature = 1.0
  # Continuations drawn per prompt (each row its own key): a small validation split gives
  # few prompts (the real-teacher config's has 22 full windows), and one draw each leaves the
  # repetition rate a count of 1-3 repeated 4-grams.
  c.eval.sample_draws = 1
  c.eval.task = ml_collections.ConfigDict()
  # Task metric on held-out prompts with reference completions (distill/eval/task.py), for
  # every model (report.json `<model>.task`, report.md "Task"): '' = off; 'exact' (exact match
  # after stripping, collapsing whitespace and case-folding), 'number' (the last number of the
  # completion equals the reference's), 'regex' (group 1 of eval.task.regex, else group 0,
  # on both sides) or 'verifier' (eval.task.verifier). Needs a table of prompt/completion (or
  # messages) rows.
  c.eval.task.kind = ""
  # Which prompts: '' = the built-in task's test split for data.name='task:...', else the
  # validation split; 'validation', 'test' (a built-in task's), or a table ('json:/path/x.jsonl').
  c.eval.task.split = ""
  # The regex of kind 'regex', e.g. r'answer is (\\d+)'.
  c.eval.task.regex = ""
  # The function of kind 'verifier': 'module:function' on the Python path, called as
  # function(prompt, completion, reference) -> float (1 = correct); checked on every reference
  # before any training.
  c.eval.task.verifier = ""
  # New tokens per completion at most (greedy, and each sample for pass@k).
  c.eval.task.gen_len = 32
  # Score only the first this many prompts (0 = all).
  c.eval.task.max_prompts = 0
  # Sampled pass@k (unbiased estimator, Chen et al. 2021): k (0 = off), from `samples`
  # completions per prompt (>= k) at `temperature`; a sample passes when it scores >= 0.5.
  c.eval.task.pass_k = 0
  c.eval.task.samples = 0
  c.eval.task.temperature = 1.0

  c.export = ml_collections.ConfigDict()
  # Export TFLite files for the presets below as the last stage (<workdir>/export/<preset>/).
  c.export.enabled = True
  # Edge presets to export: phone (fp16, context 1024), watch (int8, context 256, <= 8 MB).
  c.export.presets = ("phone", "watch")
  # LiteRT-vs-JAX check after export: quick (pipeline default), full (acceptance figures), none.
  c.export.verify = "quick"
  # Also write <preset>/student.litertlm for LiteRT-LM: 'false', 'true' (needs
  # requirements-edge.txt; exit 2 without it) or 'auto' (when installed). Off by default: the
  # bundle's engine check needs a trained student.
  c.export.litertlm = "false"
  # Also write GGUF files for llama.cpp: comma-separated quant types out of f32, f16, q8_0,
  # q4_k_m (q4_k_m needs requirements-llamacpp.txt), e.g. "f16" or "f16,q8_0"; '' = none.
  # Written per preset as <workdir>/export/<preset>-gguf/student-<quant>.gguf, the preset's
  # max_context as the file's context length (distill/export/gguf_writer.py).
  c.export.gguf = ""
  for preset in ("phone", "watch"):
    # Per-preset overrides of distill/export/presets.py; '' / 0 = the preset's own value.
    # min_agreement: the teacher-forced top-1 agreement with JAX both export gates (the .tflite
    # check, the .litertlm engine check) need; 0 = the quantization mode's own threshold
    # (distill/export/verify.py AGREEMENT_THRESHOLD); for fp32 it is needed on top of identical
    # greedy generations. Values above 1 can never pass (a test makes a gate fail with it).
    # A failed gate keeps the file (its card and the report mark it failed) and the run exits
    # 1 after everything is written; re-running with another quant / min_agreement re-exports
    # without retraining.
    c.export[preset] = ml_collections.ConfigDict(
        dict(quant="", max_context=0, prefill_len=0, budget_mb=0.0, min_agreement=0.0))
  return c
