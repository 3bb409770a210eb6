"""Sharded distill step and evaluation on 8 fake CPU devices equal the 1-device results."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from distill import errors
from distill.eval import metrics as evaluate
from distill.train import objectives
from distill.models import sharding
from distill.train import step as step_lib
from distill.models.transformer import LM
from tests.helpers import tiny_model_config

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]


def _setup(scan=False, student_layers=1):
  teacher = LM(tiny_model_config(d_model=32, n_heads=4, n_kv_heads=4, d_ff=64, scan_layers=scan))
  student = LM(tiny_model_config(d_model=16, n_heads=4, n_kv_heads=4, d_ff=32,
                                 n_layers=student_layers, scan_layers=scan))
  t_params = teacher.init(jax.random.key(1))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, size=(8, 17)).astype(np.int32)
  mask = (rng.random((8, 16)) > 0.2).astype(np.float32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}
  loss_fn = functools.partial(objectives.distill_loss, student=student, teacher=teacher,
                              cfg=objectives.LossConfig(kind="forward_kl", temperature=2.0,
                                                        alpha=0.3))
  tx = step_lib.make_optimizer(lr=1e-2, steps=10, warmup=0)
  return teacher, student, t_params, batch, loss_fn, tx


def _run(mesh, teacher, student, t_params, batch, loss_fn, tx):
  t_shard = sharding.param_shardings(teacher, mesh)
  built = step_lib.make_step(loss_fn, tx, student, mesh, teacher_shardings=t_shard)
  tp = jax.device_put(t_params, t_shard)
  state, metrics = built.step(built.init(jax.random.key(0)), sharding.global_batch(batch, mesh),
                              jax.random.key(0), tp)
  # The step's output state (optimizer moments included) stays where the builder put it.
  for leaf, sh in zip(jax.tree.leaves(state), jax.tree.leaves(built.state_shardings)):
    assert leaf.sharding.is_equivalent_to(sh, leaf.ndim), (leaf.shape, sh)
  ev = evaluate.evaluate(student, state.params, teacher, tp, [batch], mesh, n_bytes=100)
  return state, jax.device_get(metrics), ev, built.param_shardings


@pytest.fixture(scope="module")
def one_device():
  """The models, batch and the 1-device reference run, computed once for every mesh below
  (each mesh used to recompute the identical reference)."""
  setup = _setup()
  one = sharding.make_mesh(sharding.MeshSpec(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  return setup, _run(one, *setup)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_step_and_eval_match_one_device(shape, one_device):
  setup, (ref_state, ref_m, ref_ev, _) = one_device
  mesh = sharding.make_mesh(sharding.MeshSpec(*shape))
  state, m, ev, s_shard = _run(mesh, *setup)
  for k in ("loss", "divergence", "ce", "grad_norm"):
    np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, err_msg=k)
  for k in ("val_ce", "kl_to_teacher", "top1_agreement"):
    np.testing.assert_allclose(ev[k], ref_ev[k], rtol=1e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
               state.params, ref_state.params)
  # Each parameter lives where the rules table says: large weights are never replicated.
  axes = setup[1].logical_axes()
  for (path, sh), leaf, ax in zip(
      jax.tree_util.tree_flatten_with_path(s_shard)[0], jax.tree.leaves(state.params),
      jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
    assert leaf.sharding.spec == sh.spec, path
    assert sh.spec == sharding.spec(ax, leaf.shape, mesh), path
    if leaf.ndim >= 2 and (mesh.shape["fsdp"] > 1 or mesh.shape["tensor"] > 1):
      assert any(s is not None for s in sh.spec), f"{path} {leaf.shape} replicated on {shape}"


def test_scanned_layers_sharded_step_matches_unrolled_one_device():
  """The accelerator presets' layer scan (weights stacked inside the step, FSDP/tensor-sharded)
  trains like the unrolled model on one device."""
  one = sharding.make_mesh(sharding.MeshSpec(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  ref_state, ref_m, _, _ = _run(one, *_setup(scan=False, student_layers=2))
  mesh = sharding.make_mesh(sharding.MeshSpec(data=2, fsdp=2, tensor=2))
  state, m, _, _ = _run(mesh, *_setup(scan=True, student_layers=2))
  for k in ("loss", "divergence", "ce", "grad_norm"):
    np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, err_msg=k)
  # Adam's first step is ~lr * g / (|g| + eps): where a gradient is ~1e-8 (one embedding
  # element here, 1e5 below the median) reduction order moves the update by up to ~1e-4;
  # everywhere else the parameters agree to 1e-5.
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.mean(np.abs(a - b) < 1e-5) > 0.99
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_rules_table_maps_logical_axes():
  mesh = sharding.make_mesh(sharding.MeshSpec(data=2, fsdp=2, tensor=2))
  assert sharding.spec(("embed", "mlp"), (32, 64), mesh) == P("fsdp", "tensor")
  assert sharding.spec(("vocab", "embed"), (64, 32), mesh) == P("tensor", "fsdp")
  assert sharding.spec(("batch", "length"), (8, 16), mesh) == P(("data", "fsdp"), None)
  # A dim the mesh axis does not divide stays whole rather than failing.
  assert sharding.spec(("embed", "mlp"), (32, 63), mesh) == P("fsdp", None)


@pytest.mark.parametrize("mesh_cfg,msg", [
    (dict(data=-1, fsdp=-1, tensor=1), "at most one axis"),
    (dict(data=3, fsdp=-1, tensor=1), "does not divide 8"),
    (dict(data=2, fsdp=2, tensor=1), "needs 4 devices"),
    (dict(data=0, fsdp=-1, tensor=1), "positive"),
])
def test_bad_meshes_raise_clear_errors(mesh_cfg, msg):
  with pytest.raises(errors.MeshError, match=msg):
    sharding.make_mesh(sharding.MeshSpec(**mesh_cfg))
