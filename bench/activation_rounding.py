"""How much the dynamic kernels' int8 rounding of activations costs a student, in JAX; one JSON line.

  python bench/activation_rounding.py --workdir=W [--stage=student] [--k=0,4,8,16] [--windows=43]

The int4 / dynamic-int8 files round each token's input to every fully connected op to int8
over its [min, max] (`ops.quantized_inputs` simulates it; tests/test_qat.py checks it against
the files). For each k, the student's k outlier channels are picked as the QAD stage picks them
(`qad.outlier_channels`, here on the first --pick validation windows) and computed apart
(ModelConfig.outlier_channels); the line reports, per k, the share of top-1 predictions that
flip against the student's fp32 forward when every fully connected input is rounded. Weights
stay fp32: this isolates what QAD of the weights cannot remove. Use it to choose
`--config.distill.qat_outliers`.
"""
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "Run directory.")
_STAGE = flags.DEFINE_string("stage", "student", "Stage subdirectory.")
_K = flags.DEFINE_list("k", ["0", "4", "8", "16"], "Outlier channel counts.")
_WINDOWS = flags.DEFINE_integer("windows", 43, "Validation windows (128 tokens) measured.")
_PICK = flags.DEFINE_integer("pick", 8, "Windows the channels are picked on.")


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from distill.inference import model as inference  # pylint: disable=import-outside-toplevel
  from distill.methods import qat as qad
  from distill.export import artifact  # pylint: disable=import-outside-toplevel
  from distill.models import ops  # pylint: disable=import-outside-toplevel
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel

  model = inference.load(os.path.join(_WORKDIR.value, _STAGE.value))
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), model.params)
  base = LM(model.lm.cfg.replace(dtype="float32", param_dtype="float32", outlier_channels=()))
  windows, masks = artifact.validation_windows(artifact.default_data_spec(), model.tokenizer,
                                               _WORKDIR.value, count=_WINDOWS.value, length=128)
  tokens = jnp.asarray(np.stack([np.asarray(w, np.int32) for w in windows]))
  keep = np.concatenate([np.asarray(m, bool) for m in masks])
  ref = np.asarray(jax.jit(base.apply)(params, tokens)).argmax(-1).reshape(-1)
  row = {"workdir": _WORKDIR.value, "stage": _STAGE.value, "positions": int(keep.sum())}
  for k in (int(v) for v in _K.value):
    chans = qad.outlier_channels(base, params, [tokens[:_PICK.value]], k)
    lm = LM(base.cfg.replace(outlier_channels=chans))

    def rounded(p, t, lm=lm):
      with ops.quantized_inputs(True):
        return lm.apply(p, t)
    got = np.asarray(jax.jit(rounded)(params, tokens)).argmax(-1).reshape(-1)
    row[f"flipped_k{k}"] = round(float((got != ref)[keep].mean()), 5)
    row[f"channels_k{k}"] = list(chans)
  from distill.run import precision  # pylint: disable=import-outside-toplevel
  row["precision"] = precision.record()  # the machine's policy (this bench runs fp32)
  print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
