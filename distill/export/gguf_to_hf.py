"""Write a GGUF model as a Hugging Face safetensors directory.

  python -m distill.convert --gguf=SmolLM2-135M-Instruct.Q4_1.gguf --out=runs/smollm2_hf

The output holds config.json, model.safetensors (dequantized, fp32 unless --dtype says
otherwise), generation_config.json, tokenizer.json and tokenizer_config.json (special tokens,
chat template): `transformers.AutoModelForCausalLM.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)` load it, and so does `distill.load("hf:OUT")`. Tensors
are dequantized and written one at a time; the directory appears only when complete (it is
written as OUT.tmp-PID and renamed), so an error leaves nothing behind. An existing OUT is
never overwritten. Bad inputs give one `error:` line, exit 2.
"""
from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np

from distill.errors import LoadError
from distill.models import gguf, hf
from distill.models.gguf import tokenizer as gguf_tokenizer


_ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
          "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
          "gemma3_text": "Gemma3ForCausalLM"}
_SAFETENSORS = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def convert(gguf_path: str, out: str, dtype: str = "float32") -> str:
  """GGUF -> HF directory `out`; returns `out`. Raises LoadError / ValueError on bad input."""
  out = os.path.abspath(os.path.expanduser(out))
  if os.path.exists(out):
    raise ValueError(f"--out={out} already exists; remove it or give a new directory")
  ckpt = gguf.Checkpoint(gguf_path)
  cfg = hf.model_config(ckpt.config)  # refuses what the HF families here cannot express
  tok = gguf_tokenizer.load(ckpt.reader, ckpt.meta, ckpt.path)
  names = [name for name, _ in hf.layout(cfg, "llama").values()]
  missing = [n for n in names if n not in ckpt]
  if missing:
    raise LoadError(f"{gguf_path} lacks tensor(s) {', '.join(missing[:3])}; re-download "
                         "or re-convert it")
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
              "float16": np.float16}[dtype]
  tmp = f"{out}.tmp-{os.getpid()}"
  os.makedirs(tmp)
  try:
    _write_safetensors(os.path.join(tmp, "model.safetensors"), ckpt, names, np_dtype,
                       _SAFETENSORS[dtype])
    config = dict(ckpt.config, architectures=[_ARCHS[ckpt.config["model_type"]]],
                  torch_dtype=dtype, use_cache=True)
    if config["model_type"] == "qwen2":  # llama.cpp runs qwen2 with full attention
      config.update(use_sliding_window=False, sliding_window=None)
    if "hidden_act" in config and config["model_type"].startswith("gemma"):
      config["hidden_activation"] = config["hidden_act"]
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
      json.dump({k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
                f, indent=2)
    tok_dir = os.path.dirname(tok._model_path())  # pylint: disable=protected-access
    for name in ("tokenizer.json", "tokenizer_config.json"):
      shutil.copyfile(os.path.join(tok_dir, name), os.path.join(tmp, name))
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def _write_safetensors(path: str, ckpt, names, np_dtype, tag: str):
  """safetensors written tensor by tensor: the header needs only the shapes, known up front."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  itemsize = np.dtype(np_dtype).itemsize
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name in names:
    shape = ckpt.shape(name)
    size = itemsize
    for n in shape:
      size *= n
    header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for name in names:
      data = ckpt.read(name).astype(np_dtype)
      assert list(data.shape) == header[name]["shape"], name
      f.write(data.tobytes())
      del data
