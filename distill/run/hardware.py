"""Hardware presets: what `config.preset` sets unless the config says otherwise.

One row per target (cpu, gpu, tpu_v4, tpu_v5e, tpu_v5p, tpu_v6e). Pure data, no jax import,
so configs and `distill.run.validate` can read it cheaply; the pipeline reads typed
attributes (`hardware.get(name).dtype`), an "auto" dtype through `distill.run.precision`.

Fields:
  dtype       compute dtype of the models: matmul inputs and the activations between layers,
              or "auto" (the cpu preset): bfloat16 only where this CPU multiplies bf16
              natively and measurably faster than fp32 (its flags, confirmed by a short GEMM
              probe cached per machine; distill/run/precision.py), float32 otherwise. Which
              one wins depends on the CPU: on CPUs with AVX-512 BF16 / AMX bf16 x bf16 -> fp32
              GEMMs have measured 2-4x the fp32 rate, on one without AVX-512 about 0.6x.
              Accelerator presets use bfloat16. The rest of the policy is fixed
              (distill/models/transformer.py): matmuls accumulate in fp32
              (`preferred_element_type`; bf16 accumulation measured 4-5x slower on a CPU and
              loses digits), norms, softmax, the losses and the optimizer run in fp32, and the
              student's weights are fp32 master weights (its `param_dtype`), cast to `dtype`
              at each matmul. `--config.compute_dtype` overrides it
  teacher_dtype  dtype the read-only teacher's weights are held in when the config leaves
              `teacher.dtype` and `compute_dtype` empty ("auto": the same choice as `dtype`);
              a non-fp32 teacher also computes in it
  attention   `ModelConfig.attention` default: "xla" (einsum + fp32 softmax, runs
              anywhere), "cudnn" (fused flash attention on NVIDIA), "splash" (TPU; runs the
              "xla" einsum until the Pallas splash kernel is wired: XLA's
              dot_product_attention measured 21.5 GiB/chip vs 5.4 for the einsum on the v5e
              config in distill.aot)
  remat       rematerialize every student block in the backward pass (trades ~1/3 more
              FLOPs for activation memory that no longer grows with depth)
  scan_layers  run the blocks of both models as one lax.scan (compile time independent of
              depth; what lets distill.aot compile a 28-layer teacher at full depth). Off on
              the CPU, where the unrolled blocks let XLA:CPU fuse across layers.
  mesh        default (data, fsdp, tensor) mesh: FSDP across the chips of one host or slice
              is the cheapest way to fit teacher + student; data=-1 takes the rest
  hbm_gib     memory per chip, what `distill.aot` compares the compiled step against
  topology    default topology for `distill.aot` ('' = not a TPU: nothing to compile for)
  chips_per_host  chips per host VM, for the launch scripts and the docs
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  dtype: str
  teacher_dtype: str
  attention: str
  remat: bool
  scan_layers: bool
  mesh: tuple  # (data, fsdp, tensor)
  hbm_gib: float
  topology: str
  chips_per_host: int

  def mesh_dict(self) -> dict:
    return dict(zip(("data", "fsdp", "tensor"), self.mesh))



HARDWARE = {h.name: h for h in (
    # Laptop / CI: the dtype this CPU multiplies fastest ("auto"), every device on the data axis.
    Hardware("cpu", "auto", "auto", "xla", False, False, (-1, 1, 1), 0.0, "", 1),
    # 8 x H100 80 GB per node; FSDP within the node over NVLink, data across nodes.
    Hardware("gpu", "bfloat16", "bfloat16", "cudnn", True, True, (-1, 8, 1), 80.0, "", 8),
    # v4: 32 GiB per chip, 4 chips per host; compile-only topologies list 2 cores per chip.
    Hardware("tpu_v4", "bfloat16", "bfloat16", "splash", True, True, (-1, 4, 1), 32.0,
             "v4:2x2x1", 4),
    # v5e (v5 lite): 16 GiB per chip, the smallest HBM here: FSDP over 16 chips by default.
    Hardware("tpu_v5e", "bfloat16", "bfloat16", "splash", True, True, (-1, 16, 1), 16.0,
             "v5e:4x4", 4),
    # v5p: 95 GiB per chip.
    Hardware("tpu_v5p", "bfloat16", "bfloat16", "splash", True, True, (-1, 4, 1), 95.0,
             "v5p:2x2x1", 4),
    # v6e (Trillium): 32 GiB per chip.
    Hardware("tpu_v6e", "bfloat16", "bfloat16", "splash", True, True, (-1, 8, 1), 32.0,
             "v6e:2x4", 4),
)}


def get(name: str) -> Hardware:
  if name not in HARDWARE:
    raise ValueError(f"unknown hardware preset {name!r}; use one of {sorted(HARDWARE)}")
  return HARDWARE[name]


def mesh(name: str) -> dict:
  """The preset's default mesh as a plain dict (for `c.mesh = ConfigDict(presets.mesh(...))`)."""
  return get(name).mesh_dict()
