"""The KD loop a PyTorch user would write: the step bench's peer (never imported by distill/).

Teacher forward under `no_grad`, student forward + backward, forward KL at temperature T
(times T^2), AdamW -- `transformers`' Llama at the JAX bench's shapes (SDPA attention), in
fp32 or with one line of `torch.autocast("cpu", dtype=torch.bfloat16)`. bench/step_throughput.py
builds these in its own process and times them in turn with its JAX step.

  python bench/torch_kd.py      # standalone: one JSON line with both variants' tokens/s
"""
from __future__ import annotations

import json
import statistics
import time


def _llama(shape: dict, vocab: int, seq_len: int, seed: int):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=shape["d_model"], intermediate_size=shape["d_ff"],
      num_hidden_layers=shape["n_layers"], num_attention_heads=shape["n_heads"],
      num_key_value_heads=shape["n_kv_heads"], max_position_embeddings=seq_len,
      tie_word_embeddings=shape["tied"], rms_norm_eps=1e-6, attn_implementation="sdpa")
  return transformers.LlamaForCausalLM(cfg)


class KDLoop:
  """One PyTorch KD step per `step()` call, on a fixed random batch."""

  def __init__(self, teacher: dict, student: dict, *, vocab: int, seq_len: int, batch: int,
               temperature: float, bf16: bool, seed: int = 0):
    import torch  # pylint: disable=import-outside-toplevel
    self.torch, self.bf16, self.t = torch, bf16, temperature
    self.teacher = _llama(teacher, vocab, seq_len, seed).eval()
    self.student = _llama(student, vocab, seq_len, seed + 1).train()
    self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed + 2)
    self.ids = torch.randint(0, vocab, (batch, seq_len), generator=g)
    self.tokens = batch * seq_len

  def step(self) -> float:
    torch = self.torch
    f = torch.nn.functional
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
      with torch.no_grad():
        t_logits = self.teacher(input_ids=self.ids).logits
      s_logits = self.student(input_ids=self.ids).logits
    t = self.t
    loss = f.kl_div(f.log_softmax(s_logits.float() / t, -1), f.log_softmax(t_logits.float() / t, -1),
                    log_target=True, reduction="sum") * t * t / self.tokens
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss.item()


BENCH_TEACHER = dict(d_model=512, n_layers=12, n_heads=8, n_kv_heads=4, d_ff=1664, tied=True)
BENCH_STUDENT = dict(d_model=256, n_layers=8, n_heads=4, n_kv_heads=2, d_ff=1024, tied=True)


def main():
  out = {}
  for name, bf16 in (("torch_fp32_tokens_per_s", False), ("torch_bf16_tokens_per_s", True)):
    loop = KDLoop(BENCH_TEACHER, BENCH_STUDENT, vocab=264, seq_len=256, batch=4, temperature=2.0,
                  bf16=bf16)
    for _ in range(2):
      loop.step()
    walls = []
    for _ in range(6):
      t0 = time.perf_counter()
      loop.step()
      walls.append(time.perf_counter() - t0)
    out[name] = round(loop.tokens / statistics.median(walls), 1)
  import os  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from distill.run import precision  # pylint: disable=import-outside-toplevel
  out["precision"] = precision.record()  # what the JAX step picks on this machine
  print(json.dumps(out))


if __name__ == "__main__":
  main()
