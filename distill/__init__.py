"""distill: knowledge distillation of LLMs in JAX/Flax, ending in an on-device model."""

__all__ = ["load"]


def __getattr__(name):
  # Lazy so `import distill.losses` does not pull in the model, data or TensorFlow.
  if name == "load":
    from distill.inference.model import load
    return load
  raise AttributeError(name)
