"""The stage directory: what every pipeline stage writes and `distill.load` reads.

A stage directory holds `model_config.json`, `tokenizer/`, `params/` (orbax) and, written
last, `stage.json` (the stage's info); a directory without `stage.json` is unfinished.
"""
from __future__ import annotations

import json
import os

import jax

from distill.errors import LoadError
from distill.models.transformer import LM
from distill.models.model_config import ModelConfig
from distill.train import checkpoint
from distill.train import selection


def save_stage(directory, model_cfg: ModelConfig, tokenizer, params, info: dict | None = None):
  """Write a finished stage: params, model config, tokenizer, then stage.json last."""
  os.makedirs(directory, exist_ok=True)
  checkpoint.save_params(os.path.join(directory, "params"), params)
  with open(os.path.join(directory, "model_config.json"), "w") as f:
    f.write(model_cfg.to_json())
  tokenizer.save(os.path.join(directory, "tokenizer"))
  with open(os.path.join(directory, "stage.json"), "w") as f:
    json.dump(info or {}, f, indent=1)


def is_stage(directory) -> bool:
  return os.path.exists(os.path.join(directory, "stage.json"))


def read_model_config(directory) -> ModelConfig:
  path = os.path.join(directory, "model_config.json")
  if not os.path.exists(path):
    raise LoadError(f"{directory!r} is not a distill stage directory (no model_config.json); "
                    "point at e.g. runs/tiny/student or use 'hf:/path' for Hugging Face, "
                    "'gguf:/path/model.gguf' for GGUF")
  try:
    with open(path) as f:
      return ModelConfig.from_dict(json.load(f))
  except (json.JSONDecodeError, TypeError, ValueError) as e:
    raise LoadError(f"{path} is corrupt ({e}); re-run the stage that wrote it") from None


def load_stage_params(directory, lm: LM, shardings=None, dtype=None, best: bool = False):
  """The stage's final params, or with `best` those of its best dev checkpoint (`best/`,
  distill.train.selection), in `shardings` (default: the first device)."""
  if not is_stage(directory):
    raise LoadError(f"{directory!r} has no finished stage (stage.json missing); finish the run "
                    "with `python -m distill.main` first")
  shapes = lm.abstract_params()
  if shardings is None:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: dev, shapes)
  where = selection.best_params_dir(directory) if best else os.path.join(directory, "params")
  try:
    return checkpoint.load_params(where, checkpoint.abstract_like(shapes, shardings, dtype))
  except Exception as e:  # pylint: disable=broad-except
    raise LoadError(f"parameters in {where} are unreadable or do not match "
                    f"model_config.json ({str(e).splitlines()[0][:160]}); re-run the stage") from None
