"""Write a finished stage as a Hugging Face checkpoint that `transformers` loads.

  python -m distill.to_hf --workdir=runs/tiny --out=runs/tiny/hf [--stage=student]

The output directory holds `config.json` (a Llama config for RMSNorm/RoPE/SwiGLU students,
which is what the tiny configs train; Qwen2/Qwen3/Mistral when the student has their
switches), `model.safetensors` (fp32 unless the params are stored otherwise),
`generation_config.json` and the tokenizer:

- HF tokenizer.json: copied with a `tokenizer_config.json`, so `AutoTokenizer` works;
- SentencePiece: `tokenizer.model` with the BOS/EOS names;
- byte-level (the default of the tiny configs): distill's descriptor `distill_tokenizer.json`
  only. transformers' `AutoTokenizer` is not applicable to it; encode text as UTF-8 bytes + 3
  (pad=0, bos=1, eos=2) or use `distill.data.tokenizer.load(out_dir)`. The model itself loads
  with `transformers.AutoModelForCausalLM.from_pretrained(out_dir)`.

`config.json`'s vocab_size is the padded embedding size of the student (e.g. 264 for the
259-id byte tokenizer); ids past the tokenizer never occur in text.
"""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

from distill.inference.stage import load_stage_params, read_model_config
from distill.data import tokenizer as tokenizers
from distill.models import hf
from distill.models.transformer import LM
from distill.models.model_config import ModelConfig


class ExportError(ValueError):
  """A student this writer cannot express as a transformers config."""


def hf_config(cfg: ModelConfig, tokenizer=None) -> dict:
  """The transformers config.json dict that computes what `cfg` computes."""
  unsupported = {
      "norm": cfg.norm != "rms", "norm_plus_one": cfg.norm_plus_one, "pos": cfg.pos != "rope",
      "mlp": cfg.mlp != "swiglu", "mlp_bias": cfg.mlp_bias, "post_norms": cfg.post_norms,
      "embed_scale": cfg.embed_scale, "attn_softcap": bool(cfg.attn_softcap),
      "final_softcap": bool(cfg.final_softcap),
      "query_scale": bool(cfg.query_scale) and not math.isclose(cfg.query_scale,
                                                                cfg.k ** -0.5),
      "sliding_pattern": bool(cfg.sliding_window and cfg.sliding_pattern),
  }
  bad = sorted(k for k, v in unsupported.items() if v)
  if bad:
    raise ExportError(f"student settings {bad} have no Llama/Qwen/Mistral equivalent; "
                      "to_hf writes RMSNorm/RoPE/SwiGLU students")
  if cfg.qk_norm:
    kind = "qwen3"
    if cfg.qkv_bias != cfg.out_bias:
      raise ExportError("qwen3 export needs qkv_bias == out_bias (transformers' attention_bias)")
  elif cfg.qkv_bias and not cfg.out_bias:
    kind = "qwen2"
  elif cfg.qkv_bias != cfg.out_bias:
    raise ExportError("out_bias without qkv_bias has no transformers equivalent")
  else:
    kind = "mistral" if cfg.sliding_window else "llama"
  if cfg.sliding_window and kind != "mistral":
    raise ExportError(f"sliding_window with {kind} switches is not exported")

  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling:
    rope["rope_type"] = cfg.rope_scaling[0]
    rope["factor"] = cfg.rope_scaling[1]
    if cfg.rope_scaling[0] == "llama3":
      rope.update(low_freq_factor=cfg.rope_scaling[2], high_freq_factor=cfg.rope_scaling[3],
                  original_max_position_embeddings=cfg.rope_scaling[4])
  arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
          "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[kind]
  out = {
      "architectures": [arch], "model_type": kind, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.k, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
      # transformers 5 reads rope_parameters; rope_theta keeps 4.x readers right too.
      "rope_parameters": rope, "rope_theta": cfg.rope_theta,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": bool(cfg.out_bias),
      "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
      "use_cache": True, "torch_dtype": str(np.dtype(cfg.param_dtype)),
  }
  if cfg.sliding_window:
    out["sliding_window"] = cfg.sliding_window
  if kind in ("qwen2", "qwen3"):
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
  if tokenizer is not None:
    out.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
               pad_token_id=tokenizer.pad_id)
  return out


def _to_torch_layout(path: str, x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """Inverse of `hf.layout`'s transforms for the Llama-family names."""
  leaf = path.rsplit(".", 1)[-1]
  if leaf in ("q", "k", "v"):  # [D, heads, K] -> nn.Linear [heads*K, D]
    return x.reshape(cfg.d_model, -1).T
  if leaf == "o":  # [N, K, D] -> [D, N*K]
    return x.reshape(-1, cfg.d_model).T
  if leaf.endswith("_bias"):
    return x.reshape(-1)
  if leaf in ("gate", "up", "down", "unembed"):
    return x.T
  return x


def tensors(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
  """HF name -> host array, through the same name table the loader reads with."""
  flat = dict(hf.flatten(params))
  out = {}
  for path, (name, _) in hf.layout(cfg, "llama").items():
    host = np.asarray(jax.device_get(flat[path]))
    out[name] = np.ascontiguousarray(_to_torch_layout(path, host, cfg))
  return out


def write(out_dir: str, cfg: ModelConfig, params, tokenizer) -> str:
  """Write config.json, model.safetensors, generation_config.json and tokenizer files."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  config = hf_config(cfg, tokenizer)
  save_file(tensors(cfg, params), os.path.join(out_dir, "model.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
    json.dump({k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}, f,
              indent=2)
  _write_tokenizer(out_dir, tokenizer)
  return out_dir


def _write_tokenizer(out_dir: str, tok) -> None:
  tok.save(out_dir)  # distill's descriptor (+ tokenizer.json / tokenizer.model)
  if isinstance(tok, tokenizers.ByteTokenizer):
    return  # no transformers tokenizer class reproduces it: see the module docstring
  desc = tok.descriptor()
  token = lambda i: None if i is None else _piece(tok, i)
  cfg = {"bos_token": token(tok.bos_id), "eos_token": token(tok.eos_id),
         "pad_token": token(tok.pad_id), "model_max_length": 1 << 30}
  if desc["type"] == "hf":
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
  chat = getattr(tok, "chat_template", None)
  if chat:
    cfg["chat_template"] = chat
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(cfg, f, indent=2)


def _piece(tok, i: int) -> str:
  desc = tok.descriptor()
  for kind in ("bos", "eos", "pad"):
    if desc.get(f"{kind}_id") == i and desc.get(f"{kind}_token"):
      return desc[f"{kind}_token"]
  if isinstance(tok, tokenizers.SentencePieceTokenizer):
    return tok._sp.id_to_piece(i)  # pylint: disable=protected-access
  return tok.decode([i])


def export_stage(workdir: str, out_dir: str, stage: str = "student") -> str:
  stage_dir = os.path.join(workdir, stage)
  cfg = read_model_config(stage_dir)
  lm = LM(cfg)
  params = load_stage_params(stage_dir, lm)
  tok = tokenizers.load(os.path.join(stage_dir, "tokenizer"))
  return write(out_dir, cfg, params, tok)
