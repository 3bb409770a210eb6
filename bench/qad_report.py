"""How well a student survives int4 (or another mode) export: one JSON line per mode.

  python bench/qad_report.py --workdir=runs/tiny [--modes=int4,int4_head8,dynamic_int8] [--windows=16]

For `<workdir>/student`, exports each mode with the watch preset's shapes (context 256,
P = 64; no verification gate, so a failing file is still measured), then on the first
--windows validation windows (128 tokens, the text `distill.export --verify=full` uses):
  top1_agreement  teacher-forced top-1 agreement of the .tflite with the JAX fp32 student
  ce_jax / ce_file  validation cross-entropy (nats/token) of the JAX fp32 student / the file
  ce_rel_change   ce_file / ce_jax - 1
and bundles it as .litertlm to time it with LiteRT-LM's own benchmark (prefill P tokens,
decode 32). Compare a run distilled with --config.distill.qat=int4_block32 against one with
qat=none to see what QAD buys.
"""
import json
import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "Run directory with student/.")
_STAGE = flags.DEFINE_string("stage", "student", "Stage subdirectory.")
_MODES = flags.DEFINE_list("modes", ["int4"], "Quantization modes.")
_WINDOWS = flags.DEFINE_integer("windows", 16, "Validation windows.")
_CONTEXT = flags.DEFINE_integer("max_context", 256, "Cache length (watch: 256).")
_PREFILL = flags.DEFINE_integer("prefill_len", 64, "Prefill chunk P (watch: 64).")


def _ce(logits, ids, mask):
  import numpy as np  # pylint: disable=import-outside-toplevel
  logits = np.asarray(logits, np.float64)[:-1]
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = -logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
  keep = np.asarray(mask[1:], bool)
  return float(nll[keep].sum()), int(keep.sum())


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from distill.inference import model as inference  # pylint: disable=import-outside-toplevel
  from distill.export import artifact, converter, litertlm, litertlm_runtime, signatures  # pylint: disable=import-outside-toplevel
  from distill.export.runtime import LiteRTModel  # pylint: disable=import-outside-toplevel
  from distill.export import card as card_lib  # pylint: disable=import-outside-toplevel
  from distill.run import precision  # pylint: disable=import-outside-toplevel

  policy = precision.record()  # the machine's policy (the export compares in fp32)
  model = inference.load(os.path.join(_WORKDIR.value, _STAGE.value))
  lm32, p32 = converter.export_lm(model.lm, model.params)
  vocab = min(int(model.tokenizer.vocab_size), lm32.cfg.vocab_size)
  windows, masks = artifact.validation_windows(artifact.default_data_spec(), model.tokenizer,
                                               _WORKDIR.value, count=_WINDOWS.value,
                                               length=min(128, _CONTEXT.value))
  apply = jax.jit(lm32.apply)
  refs = [np.asarray(apply(p32, jnp.asarray(np.asarray(w, np.int32)[None])))[0, :, :vocab]
          for w in windows]
  with tempfile.TemporaryDirectory() as tmp:
    for mode in _MODES.value:
      sm = os.path.join(tmp, f"sm-{mode}")  # the export's graph for this mode (int8 lookup)
      converter.save_saved_model(converter.build_module(
          lm32, p32, vocab=vocab, max_context=_CONTEXT.value, prefill_len=_PREFILL.value,
          int8_embedding=mode in artifact.INT8_EMBEDDING_MODES), sm)
      flat, _ = converter.to_tflite(sm, mode)
      path = os.path.join(tmp, f"student-{mode}.tflite")
      with open(path, "wb") as f:
        f.write(flat)
      from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel
      sigs = card_lib.signatures(litert.Interpreter(model_path=path), lm32.cfg.n_layers)
      card = {"signatures": sigs, "max_context": _CONTEXT.value, "prefill_len": _PREFILL.value,
              "vocab_size": vocab, "kv_cache": {
                  "names": signatures.cache_names(lm32.cfg.n_layers), "dtype": "float32",
                  "shape": [1, _CONTEXT.value, lm32.cfg.n_kv_heads, lm32.cfg.k]}}
      m = LiteRTModel(path, card=card)
      agree = total = 0
      ce_j = ce_f = 0.0
      for w, mask, ref in zip(windows, masks, refs):
        got = m.teacher_forced_logits(w)
        keep = np.asarray(mask, bool)
        agree += int((ref.argmax(-1) == got.argmax(-1))[keep].sum())
        total += int(keep.sum())
        ce_j += _ce(ref, w, mask)[0]
        ce_f += _ce(got, w, mask)[0]
      n_ce = sum(int(np.asarray(mk, bool)[1:].sum()) for mk in masks)
      bundle = os.path.join(tmp, f"student-{mode}.litertlm")
      litertlm.build(path, bundle, tokenizer=model.tokenizer, n_layers=lm32.cfg.n_layers,
                     max_context=_CONTEXT.value)
      lat = litertlm_runtime.benchmark(bundle, prefill_tokens=_PREFILL.value,
                                       decode_tokens=min(32, _CONTEXT.value - _PREFILL.value - 1))
      row = {"workdir": _WORKDIR.value, "mode": mode, "tflite_bytes": len(flat),
             "litertlm_bytes": os.path.getsize(bundle), "windows": len(windows),
             "positions": total, "top1_agreement": round(agree / max(total, 1), 5),
             "ce_jax": round(ce_j / n_ce, 5), "ce_file": round(ce_f / n_ce, 5),
             "ce_rel_change": round(ce_f / ce_j - 1, 5),
             "litertlm_prefill_tokens_per_s": lat["prefill_tokens_per_s"],
             "litertlm_decode_tokens_per_s": lat["decode_tokens_per_s"]}
      row["precision"] = policy
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
