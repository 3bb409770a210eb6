"""An interrupted stage resumes from its checkpoint and ends with identical parameters."""
import functools
import json

import jax
import numpy as np
import pytest

from distill.run import settings
from distill import data
from distill.models import sharding
from distill.data import tokenizer as tokenizers
from distill.train import loop as train
from distill.train import objectives
from distill.train import step as step_lib
from distill.models.transformer import LM
from tests.helpers import Interrupt, KillAfter, data_spec, shrunken_config, tiny_model_config



def run_stage(workdir, stage_dir, kill_after=None, data_dir="", spec=None):
  """6 CE steps of a tiny LM, checkpoint every 2; dies after `kill_after` batches if given.
  `spec`: the data (default: the shrunken tiny config's text windows)."""
  c = shrunken_config(**{"data.data_dir": data_dir})
  tok = tokenizers.ByteTokenizer()
  lm = LM(tiny_model_config(vocab_size=264, max_len=64))
  spec = spec or settings.data_spec(c.data)
  it = data.make_train_iterator(spec, tok, workdir, batch_size=8, seed=3, fraction=0.5)
  if kill_after is not None:
    it = KillAfter(it, kill_after)
  mesh = sharding.make_mesh(sharding.MeshSpec(data=-1, fsdp=1, tensor=1), devices=jax.devices()[:2])
  return train.run(name="t", lm=lm, mesh=mesh, stage_dir=stage_dir, data_iter=it, steps=6,
                   loss_fn=functools.partial(objectives.ce_loss, student=lm),
                   tx=step_lib.make_optimizer(lr=1e-2, steps=6, warmup=1), seed=3,
                   checkpoint_every=2, log_every=1, is_main=True)


def table_spec(tmp_path):
  """A prompt/completion JSONL table (completion-only loss masks, one example per row)."""
  path = tmp_path / "rows.jsonl"
  with open(path, "w") as f:
    for a in range(30):
      f.write(json.dumps({"prompt": f"{a}+{a % 7}=", "completion": str(a + a % 7)}) + "\n")
  return data_spec("json:" + str(path), seq_len=16)


@pytest.mark.parametrize("form", ["text", "table"])
def test_resume_after_interruption_is_exact(form, tmp_path):
  workdir = str(tmp_path)
  spec = table_spec(tmp_path) if form == "table" else settings.data_spec(shrunken_config().data)
  data.prepare(spec, workdir)
  ref = run_stage(workdir, str(tmp_path / "ref"), spec=spec)
  with pytest.raises(Interrupt):
    run_stage(workdir, str(tmp_path / "cut"), kill_after=3, spec=spec)  # dies in step 4
  resumed = run_stage(workdir, str(tmp_path / "cut"), spec=spec)
  assert resumed.resumed_from == 2
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               resumed.params, ref.params)
  assert [s for s, _ in resumed.history] == [1, 2, 3, 4, 5, 6]
  assert resumed.history[-1][1]["loss"] == ref.history[-1][1]["loss"]
