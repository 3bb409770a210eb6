"""distill: knowledge distillation of LLMs in JAX/Flax, ending in an on-device model."""

__all__ = ["load"]


def __getattr__(name):
  if name == "load":
    # Lazy: `import distill.losses` (or a config file) must not pull in the model and data.
    from distill.inference.model import load
    return load
  raise AttributeError(name)
