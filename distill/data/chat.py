"""Conversations through a tokenizer's Jinja chat template, and the spans a loss trains on.

The template is `chat_template` of the tokenizer's tokenizer_config.json (`HFTokenizer`
reads it; `Tokenizer.save` writes it back, so every stage, and the student exported from it,
carries the teacher's template). Rendering follows transformers' `apply_chat_template`: a
sandboxed Jinja environment with trim_blocks and lstrip_blocks, `raise_exception`, and the
tokenizer's special tokens as `bos_token` / `eos_token` / `pad_token`.

Trained spans: assistant turn i covers the text between the rendering of messages[:i] with
the generation prompt and the rendering of messages[:i + 1]; a template for which those are
not prefixes of the whole conversation cannot be cut that way and is refused.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

ASSISTANT = "assistant"


def template_of(tok: Any) -> str | None:
  """The tokenizer's chat template, or None (byte and SentencePiece tokenizers have none)."""
  return getattr(tok, "chat_template", None) or None


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
  from jinja2 import sandbox  # pylint: disable=import-outside-toplevel
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

  def fail(msg):
    raise ValueError(f"chat template: {msg}")
  env.globals["raise_exception"] = fail
  return env.from_string(template)


def render(tok: Any, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
  """`messages` ({role, content} dicts) as the tokenizer's chat template writes them."""
  template = template_of(tok)
  if template is None:
    raise ValueError(f"the tokenizer ({type(tok).__name__}) has no chat template; use one "
                     "whose tokenizer_config.json has a chat_template")
  desc = tok.descriptor()
  tokens = {f"{k}_token": desc.get(f"{k}_token") for k in ("bos", "eos", "pad")}
  return _compiled(template).render(messages=list(messages),
                                    add_generation_prompt=add_generation_prompt, **tokens)


def render_prompt(tok: Any, prompt: str) -> str:
  """`prompt` as one user turn, ready for the assistant's answer."""
  return render(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def spans(tok: Any, messages: Sequence[dict], first_trained: int
          ) -> tuple[str, list[tuple[int, int]]]:
  """(the rendered conversation, [start, end) character spans of the assistant turns at
  index >= first_trained), in order."""
  full = render(tok, messages, add_generation_prompt=False)
  out = []
  for i, m in enumerate(messages):
    if i < first_trained or m["role"] != ASSISTANT:
      continue
    before = render(tok, messages[:i], add_generation_prompt=True)
    through = render(tok, messages[:i + 1], add_generation_prompt=False)
    if not (through.startswith(before) and full.startswith(through)):
      raise ValueError("the chat template does not render a conversation as a prefix of its "
                       f"continuation (turn {i}), so its assistant turns cannot be told apart; "
                       "use a template that renders turns in order")
    out.append((len(before), len(through)))
  return full, out
