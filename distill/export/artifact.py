"""One export: student -> verified .tflite + model card + tokenizer, published atomically.

Everything is written into a hidden sibling folder first, then renamed to the output folder
(replacing an older export). A file that fails its verification gate (the .tflite check or
the .litertlm engine check) is still published, its card marked failed with the figures
(`status: "failed"`), and then `verify.VerificationError` is raised: the user keeps what was
made and measured, and an app reading the card sees the verdict. Any other failure (a file
over budget, a conversion error) removes the temporary folder, so the output folder is left
as it was.

Verification levels: "full" is the acceptance check (greedy parity on prompts of every length
1 ... 2 x prefill + 1, 16 new tokens each, and 16 validation windows teacher-forced); "quick"
is what the pipeline stage runs (the prefill boundaries 1, 2, P/2, P-1, P, P+1, 2P-1, 2P,
2P+1, and 4 windows); "none" skips it (the bench). The card records what was measured.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from distill import data
from distill.errors import BudgetError
from distill.export import quiet_tf
from distill.export import card as card_lib
from distill.export import converter, presets, quantize, verify
from distill.export.runtime import LiteRTModel
from distill.models.transformer import count_params
from distill.export import litertlm as litertlm_lib
from distill.export import litertlm_runtime as lrt

# Quantized modes also store the token-lookup table as int8 rows (`converter.step_fn`): the
# TFLite quantizers leave a GATHER's table fp32, which alone broke the watch budget.
INT8_EMBEDDING_MODES = ("dynamic_int8", "int8", "int4", "int4_head8")

LEVELS = {"full": dict(every_length=True, new_tokens=16, windows=16, calib=16),
          "quick": dict(every_length=False, new_tokens=16, windows=4, calib=8),
          "none": dict(every_length=False, new_tokens=0, windows=0, calib=8)}


def default_data_spec(seq_len: int = 128) -> data.DataSpec:
  """The embedded corpus under <workdir>/data, as the tiny pipeline prepared it."""
  return data.DataSpec(name="pydoc_topics", data_dir="", tokenizer="byte", seq_len=seq_len,
                       add_bos=None, max_documents=None, dev_fraction=0.0,
                       columns=(), validation_name="")


def train_streams(data_spec, tokenizer, workdir, *, count: int, length: int) -> list[np.ndarray]:
  """`count` token streams of `length` tokens, rows of the training iterator laid end to end."""
  it = data.make_train_iterator(data_spec, tokenizer, workdir, batch_size=1, seed=0)
  streams, buf = [], []
  while len(streams) < count:
    row = next(it)
    buf.extend(np.concatenate([row["inputs"][0], row["targets"][0, -1:]]).tolist())
    if len(buf) >= length:
      streams.append(np.asarray(buf[:length], np.int32))
      buf = []
  return streams


def validation_windows(data_spec, tokenizer, workdir, *, count: int, length: int):
  """(windows, masks): the first `count` validation windows cut to `length` tokens."""
  batch = data.eval_batches(data_spec, tokenizer, workdir, split="validation", batch_size=count,
                            max_batches=1)[0]
  keep = batch["mask"].sum(-1) > 0
  return list(batch["inputs"][keep, :length]), list(batch["mask"][keep, :length] > 0)


def _publish(tmp: str, out_dir: str) -> None:
  old = None
  if os.path.exists(out_dir):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
    os.rename(out_dir, os.path.join(old, "x"))
  os.rename(tmp, out_dir)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def export(lm, params, tokenizer, preset: presets.Preset, out_dir: str, *, data_spec=None,
           workdir: str | None = None, level: str = "full", tokenizer_dir: str | None = None,
           source: dict | None = None, num_threads: int | None = None,
           keep_saved_model: bool = False, litertlm: bool = False,
           start_token: int | None = None, threshold: float | None = None,
           log=print) -> dict:
  """Exports, verifies and publishes one preset; returns the model card.

  data_spec/workdir: the text calibration and verification read (default: the embedded
  corpus under the output's parent); level: verification depth (LEVELS); tokenizer_dir: the
  stage's tokenizer files to ship (else the tokenizer saves itself); source: what the card
  says the model came from; litertlm: also bundle the verified .tflite with the tokenizer and
  metadata into `student.litertlm` for LiteRT-LM, checked through its engine (litertlm.py);
  start_token: the bundle's start token as asked (None: the model's own convention; one that
  disagrees with it is refused before any conversion, see `litertlm.start_token`);
  threshold: the agreement both gates need (None = each mode's `verify.AGREEMENT_THRESHOLD`).
  The folder appears complete or not at all (`_publish`); after a failed gate it appears
  complete with the card marked failed, and VerificationError is raised.
  """
  t_start = time.time()
  _check(lm, params, tokenizer, preset, level, litertlm, start_token)
  vocab = min(int(tokenizer.vocab_size), lm.cfg.vocab_size)
  need = LEVELS[level]
  workdir = workdir or os.path.dirname(os.path.abspath(out_dir))
  data_spec = data_spec or default_data_spec()
  out_dir = os.path.abspath(out_dir)
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=os.path.dirname(out_dir))
  model = None
  try:
    lm32, p32 = converter.export_lm(lm, params)
    flat, detail, calib_info, timings = _convert(tmp, lm32, p32, vocab, preset, tokenizer,
                                                 data_spec, workdir, need, keep_saved_model)
    name = f"student-{preset.quant}.tflite"
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      f.write(flat)
    tok_files = _write_tokenizer(tmp, name, tokenizer, tokenizer_dir)
    card = _card(path, name, flat, preset, detail, lm.cfg, vocab, tokenizer, tok_files,
                 dict(source or {}, params=count_params(params)), calib_info)
    model = LiteRTModel(path, card=card, num_threads=num_threads)
    ref = verify.reference_params(p32, preset.quant)  # what the file's weights compute
    failed = None  # the gate's VerificationError, raised once the folder is published
    if level != "none":
      t0 = time.time()
      try:
        card["verification"] = _verification(model, lm32, ref, preset, tokenizer, data_spec,
                                             workdir, need, level, threshold)
      except verify.VerificationError as e:
        card["verification"] = _failed(e, level=level, text=VERIFY_TEXT)
        failed = e
      timings["verify_s"] = round(time.time() - t0, 2)
    else:
      card["verification"] = {"level": "none", "passed": None}
    card["latency"] = model.latency()
    if litertlm and failed is None:  # a bundle wraps a verified .tflite only
      t0 = time.time()
      card["litertlm"], failed = _bundle(tmp, path, lm32, ref, tokenizer, preset, lm.cfg, vocab,
                                         tokenizer_dir, data_spec, workdir, need, level, model,
                                         start_token, threshold)
      timings["litertlm_s"] = round(time.time() - t0, 2)
    card["status"] = _status(card, failed)
    timings["total_s"] = round(time.time() - t_start, 2)
    card["export_timings"] = timings
    card_lib.write(tmp, card)
    model = None
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published folder is ordinary
    _publish(tmp, out_dir)
  except BaseException:
    model = None
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  _log_result(log, preset, out_dir, name, flat, card, timings)
  if failed is not None:
    raise failed
  return card


def _failed(e: verify.VerificationError, **extra) -> dict:
  """A failed gate's record for the card: its figures, passed False, and the message."""
  return dict(e.figures, passed=False, error=str(e), **extra)


def _status(card: dict, failed) -> str:
  """The card's one-word verdict: failed (a gate failed), verified, or unverified (level none)."""
  if failed is not None:
    return "failed"
  return "verified" if card["verification"].get("passed") else "unverified"


def _check(lm, params, tokenizer, preset: presets.Preset, level: str, litertlm: bool,
           start_token: int | None) -> None:
  """What can be refused before minutes of conversion: the level, a bundle that cannot be made
  at all, a context past learned positions, a model that cannot fit the budget."""
  if level not in LEVELS:
    raise ValueError(f"verification level {level!r}: use one of {sorted(LEVELS)}")
  if litertlm:
    litertlm_lib.builder_module()
    litertlm_lib.engine_module()
    litertlm_lib.llm_metadata(tokenizer, preset.max_context, start_token)
  cfg = lm.cfg
  if cfg.pos == "learned" and preset.max_context > cfg.max_len:
    raise ValueError(f"max_context={preset.max_context} exceeds the model's {cfg.max_len} "
                     "learned positions; export with a smaller --max_context")
  presets.check_estimate(preset, count_params(params))


def _convert(tmp, lm32, p32, vocab, preset: presets.Preset, tokenizer, data_spec, workdir, need,
             keep_saved_model: bool):
  """SavedModel -> TFLite flatbuffer for the preset's quantization (int8 calibrates on the
  training split); (flatbuffer, quantization detail, calibration info or None, timings)."""
  t0 = time.time()
  sm_dir = os.path.join(tmp, "saved_model")
  converter.save_saved_model(converter.build_module(
      lm32, p32, vocab=vocab, max_context=preset.max_context, prefill_len=preset.prefill_len,
      int8_embedding=preset.quant in INT8_EMBEDDING_MODES), sm_dir)
  timings = {"saved_model_s": round(time.time() - t0, 2)}
  calibration, calib_info = None, None
  if preset.quant == "int8":
    t0 = time.time()
    streams = train_streams(data_spec, tokenizer, workdir, count=need["calib"],
                            length=preset.max_context + 1)
    calibration = quantize.calibration_samples(lm32, p32, streams, max_context=preset.max_context,
                                               prefill_len=preset.prefill_len)
    calib_info = {"source": "training split (distill.data.make_train_iterator)",
                  "streams": len(streams), "samples": len(calibration)}
    timings["calibration_data_s"] = round(time.time() - t0, 2)
  t0 = time.time()
  flat, detail = converter.to_tflite(sm_dir, preset.quant, calibration)
  timings["convert_s"] = round(time.time() - t0, 2)
  if not keep_saved_model:
    shutil.rmtree(sm_dir)
  presets.check_file(preset, len(flat))
  return flat, detail, calib_info, timings


def _write_tokenizer(tmp: str, model_file: str, tokenizer, tokenizer_dir) -> list[str]:
  """The stage's tokenizer files beside the model (or the tokenizer's own save); their names."""
  if tokenizer_dir and os.path.isdir(tokenizer_dir):
    for fn in sorted(os.listdir(tokenizer_dir)):
      if os.path.isfile(os.path.join(tokenizer_dir, fn)):
        shutil.copyfile(os.path.join(tokenizer_dir, fn), os.path.join(tmp, fn))
  else:
    tokenizer.save(tmp)
  return sorted(f for f in os.listdir(tmp) if f != model_file and os.path.isfile(
      os.path.join(tmp, f)))


def _card(path, name, flat, preset, detail, cfg, vocab, tokenizer, tok_files, source,
          calib_info) -> dict:
  """The model card of the written file, its signatures read back through LiteRT."""
  from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel
  with quiet_tf.native_stderr():  # TFLite announces its XNNPACK delegate on stderr
    sigs = card_lib.signatures(litert.Interpreter(model_path=path), cfg.n_layers)
  card = card_lib.build(model_file=name, nbytes=len(flat), preset=preset, quant_detail=detail,
                        cfg=cfg, vocab=vocab, tokenizer=tokenizer, tokenizer_files=tok_files,
                        sigs=sigs, source=source)
  card["ops"] = converter.op_counts(path)
  if calib_info:
    card["calibration"] = calib_info
  return card


VERIFY_TEXT = "validation split (distill.data.eval_batches)"


def _lengths(preset, need) -> list[int]:
  return verify.sweep_lengths(preset.prefill_len, need["every_length"])


def _verification(model, lm32, p32, preset, tokenizer, data_spec, workdir, need, level,
                  threshold) -> dict:
  """The file against the JAX fp32 model on validation windows and the prompt-length sweep."""
  length = min(preset.max_context, data_spec.seq_len)
  windows, masks = validation_windows(data_spec, tokenizer, workdir, count=need["windows"],
                                      length=length)
  prompts = verify.sweep_prompts(tokenizer, windows, _lengths(preset, need),
                                 preset.max_context - 1)
  return dict(verify.verify(model, lm32, p32, preset.quant, prompts=prompts,
                            new_tokens=need["new_tokens"], windows=windows, masks=masks,
                            threshold=threshold),
              level=level, text=VERIFY_TEXT)


def _log_result(log, preset, out_dir, name, flat, card, timings) -> None:
  log(f"[export] {preset.name}: {os.path.join(out_dir, name)} {preset.quant} "
      f"{len(flat) / 1e6:.2f} MB, decode {card['latency']['decode_tokens_per_s']} tok/s, "
      f"verification {_verdict(card)}, {timings['total_s']:.1f}s")
  if "litertlm" in card:
    b = card["litertlm"]
    check = b.get("engine_check", {}).get("passed")
    verdict = "" if check is None else f", engine check {'passed' if check else 'FAILED'}"
    log(f"[export] {preset.name}: {os.path.join(out_dir, b['file'])} {b['bytes'] / 1e6:.2f} MB, "
        f"LiteRT-LM prefill {b['latency']['prefill_tokens_per_s']} tok/s, decode "
        f"{b['latency']['decode_tokens_per_s']} tok/s{verdict}")


def _bundle(tmp, tflite_path, lm32, p32, tokenizer, preset, cfg, vocab, tokenizer_dir, data_spec,
            workdir, need, level, model, start_token, threshold):
  """Builds student.litertlm in `tmp`, checks it in LiteRT-LM's engine, benchmarks it;
  (card section, the engine check's VerificationError or None). A failed bundle is still
  benchmarked: the file is kept, and its speed is one of its figures."""
  failed = None
  out = os.path.join(tmp, litertlm_lib.BUNDLE_NAME)
  info = litertlm_lib.build(tflite_path, out, tokenizer=tokenizer, n_layers=cfg.n_layers,
                            max_context=preset.max_context, tokenizer_dir=tokenizer_dir,
                            requested_start=start_token)
  if info["bytes"] > preset.budget_bytes:
    # The bundle adds the tokenizer and metadata to a .tflite that fitted.
    raise BudgetError(presets.over_budget_message(preset, info["bytes"]).replace(
        "file is", ".litertlm bundle is"))
  engine = lrt.open_engine(out, threads=model.num_threads)
  try:
    if level != "none":
      length = min(preset.max_context, data_spec.seq_len)
      windows, _ = validation_windows(data_spec, tokenizer, workdir, count=need["windows"],
                                      length=length)
      try:
        info["engine_check"] = verify.bundle_check(
            engine, lm32, p32, tokenizer, preset.quant, windows=windows,
            prompt_lengths=_lengths(preset, need), new_tokens=need["new_tokens"], vocab=vocab,
            max_context=preset.max_context, threshold=threshold)
      except verify.VerificationError as e:
        info["engine_check"], failed = _failed(e), e
  finally:
    engine.close()
  decode = max(1, min(32, preset.max_context - preset.prefill_len - 1))
  # The same thread count as the .tflite figures (the engine's own default oversubscribes).
  info["latency"] = lrt.benchmark(out, prefill_tokens=preset.prefill_len, decode_tokens=decode,
                                  threads=model.num_threads)
  return info, failed


def _verdict(card: dict) -> str:
  v = card.get("verification", {})
  if v.get("passed") is None:
    return "skipped"
  g, t = v["greedy"], v["teacher_forced"]
  return (f"{'passed' if v['passed'] else 'FAILED'} ({g['identical_prompts']}/{g['prompts']} "
          f"greedy identical, top-1 agreement {t['top1_agreement']:.1%})")
