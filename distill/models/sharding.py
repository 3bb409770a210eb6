"""Mesh from the config, ONE table of logical-axis rules, shardings derived from shapes.

Modules name logical axes only; this table is the single place that says where they live on
the mesh `("data", "fsdp", "tensor")`. Multi-slice TPU runs set `mesh.slices`: the data axis
then also spans the slices over DCN (see `make_mesh`). Weights are split over `fsdp` (ZeRO-3 style: gathered
per layer by XLA) and `tensor` (Megatron style); activations' batch over `data` x `fsdp`.
"""
from __future__ import annotations

import logging
import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from distill.errors import MeshError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("length", None),
)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """Mesh sizes over (data, fsdp, tensor); exactly one may be -1 (all remaining devices).
  `slices` > 1 spans TPU slices over the data-center network (data axis only)."""
  data: int
  fsdp: int
  tensor: int
  slices: int = 1


def mesh_shape(spec: MeshSpec, n_devices: int) -> tuple[int, ...]:
  shape = [int(getattr(spec, a)) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in shape):
    raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))}: sizes must be positive or -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n_devices % known:
      raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))} does not divide {n_devices} devices; "
                      f"make the fixed axes' product divide {n_devices}")
    shape[shape.index(-1)] = n_devices // known
  elif known != n_devices:
    raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))} needs {known} devices but "
                    f"{n_devices} are present; set one axis to -1 or match the device count")
  slices = num_slices(spec)
  if shape[0] % slices:
    raise MeshError(f"mesh data={shape[0]} is not divisible by slices={slices}; the data axis "
                    "spans the slices, so make it a multiple of the slice count")
  return tuple(shape)


def num_slices(spec: MeshSpec) -> int:
  """TPU slices joined over the data-center network (1 = one slice)."""
  slices = int(spec.slices)
  if slices < 1:
    raise MeshError(f"mesh slices={slices} must be >= 1")
  return slices


def make_mesh(spec: MeshSpec, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(spec, len(devices))
  slices = num_slices(spec)
  if slices > 1:
    # Multi-slice: the data axis is split into (slices x data-per-slice) with the slice index
    # outermost, so only the data-parallel gradient all-reduce crosses the slow DCN links;
    # fsdp/tensor collectives stay on each slice's ICI. Axis names (and the rules) unchanged.
    from jax.experimental import mesh_utils
    ici = (shape[0] // slices,) + shape[1:]
    dcn = (slices,) + (1,) * (len(shape) - 1)
    arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices,
                                               allow_split_physical_axes=True)
    return Mesh(arr, MESH_AXES)
  try:
    from jax.experimental import mesh_utils
    arr = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except Exception:  # pylint: disable=broad-except  # topology-agnostic fallback (CPU)
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES)


def _rule(name):
  for logical, mesh_axis in RULES:
    if logical == name:
      return mesh_axis
  raise KeyError(f"logical axis {name!r} has no rule in distill.models.sharding.RULES")


def spec(axes, shape, mesh: Mesh) -> P:
  """PartitionSpec for logical `axes`; a mesh axis that does not divide the dim is dropped."""
  out, used = [], set()
  for name, dim in zip(axes, shape):
    mesh_axes = _rule(name) if name is not None else None
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())
    kept = []
    for a in mesh_axes:
      size = mesh.shape[a]
      if a in used or size == 1:
        continue
      if dim % (math.prod(mesh.shape[k] for k in kept) * size) == 0:
        kept.append(a)
      else:
        logging.debug("dim %d (%s) not divisible by mesh axis %s=%d: replicated", dim, name, a, size)
    used.update(kept)
    out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*out)


def _is_axes(x):
  return isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


def param_shardings(lm, mesh: Mesh):
  """NamedShardings for an `LM`'s pure-dict params, from abstract shapes only."""
  shapes = lm.abstract_params()
  return jax.tree.map(lambda axes, s: NamedSharding(mesh, spec(axes, s.shape, mesh)),
                      lm.logical_axes(), shapes, is_leaf=_is_axes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, spec(("batch", "length"), (mesh.shape["data"] * mesh.shape["fsdp"], 1),
                                  mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Per-process numpy rows -> one global jax.Array per key, sharded over batch."""
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in local.items()}
