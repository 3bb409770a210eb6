"""Two real JAX processes on loopback (gloo collectives) run the distill loop like one.

The parent test starts 2 children of this module; each calls `jax.distributed.initialize`
with 4 fake CPU devices, reads its own rows of every global batch from `distill.data`
(process_index / process_count), and runs 3 distill steps through `train.run`, which saves
an orbax checkpoint from both processes. The parent (8 fake devices, one process) then runs
the same 3 steps itself and checks that:
  * the per-step metrics of the 2-process run equal the 1-process ones;
  * the 2-process checkpoint restores in this single process onto another mesh (8, 1, 1),
    with the restored parameters equal to the 1-process result and laid out for that mesh.

Child usage (what the parent runs): python -m tests.test_multihost <pid> <port> <workdir>
"""
from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
BATCH = 8
SEQ_LEN = 16
MULTI_MESH = dict(data=2, fsdp=2, tensor=2)  # crosses processes on every axis it can
RESTORE_MESH = dict(data=8, fsdp=1, tensor=1)


def _write_corpus(directory: str) -> str:
  """A handful of text files from the stdlib docs; enough windows for 3 batches of 8."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  for i, key in enumerate(sorted(topics.topics)[:12]):
    with open(os.path.join(directory, f"doc{i:02d}.txt"), "w", encoding="utf-8") as f:
      f.write(topics.topics[key][:4000])
  return "text:" + os.path.join(directory, "*.txt")


def _data_cfg(corpus_glob: str):
  from tests.helpers import data_spec  # pylint: disable=import-outside-toplevel
  return data_spec(corpus_glob, seq_len=SEQ_LEN)


def _models():
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel
  from tests.helpers import tiny_model_config  # pylint: disable=import-outside-toplevel
  vocab = 264  # byte tokenizer's 259, padded to a multiple of 8 as the pipeline does
  teacher = LM(tiny_model_config(vocab_size=vocab, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64,
                                 n_layers=2))
  student = LM(tiny_model_config(vocab_size=vocab, d_model=16, n_heads=2, n_kv_heads=2, d_ff=32,
                                 n_layers=1))
  return teacher, student


def _teacher_params(teacher, shardings):
  """Random teacher weights from numpy, identical on every process, placed shard by shard.

  Cheaper here than jitting `teacher.init` (a compile per process on 2 shared cores), and
  the same path a real multi-host loader takes: each process fills only its own shards.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)

  def make(shape, sh):
    # Norm scales at 1, matrices ~ N(0, 1/fan_in): a teacher whose logits are not flat.
    value = (np.ones(shape.shape, np.float32) if len(shape.shape) == 1 else
             rng.standard_normal(shape.shape).astype(np.float32) / np.sqrt(shape.shape[0]))
    return jax.make_array_from_callback(shape.shape, sh, lambda idx: value[idx])
  return jax.tree.map(make, teacher.abstract_params(), shardings)


def _optimizer():
  from distill.train import step  # pylint: disable=import-outside-toplevel
  return step.make_optimizer(lr=1e-2, steps=STEPS, warmup=0)


def _loss_fn(teacher, student):
  from distill.train import objectives  # pylint: disable=import-outside-toplevel
  return functools.partial(objectives.distill_loss, student=student, teacher=teacher,
                           cfg=objectives.LossConfig(kind="forward_kl", temperature=2.0,
                                                     alpha=0.3))


def distill_run(workdir: str, corpus_glob: str, mesh_cfg: dict, stage: str, steps: int = STEPS,
                sigterm_at: int = 0):
  """`steps` distill steps through `train.run` on `mesh_cfg`; returns the per-step metrics.

  `sigterm_at` > 0: this process sends itself SIGTERM when it draws batch `sigterm_at` (i.e.
  during that step), as a preemption notice reaching one VM of a slice would.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from distill import data  # pylint: disable=import-outside-toplevel
  from distill.models import sharding  # pylint: disable=import-outside-toplevel
  from distill.data import tokenizer as tokenizers  # pylint: disable=import-outside-toplevel
  from distill.train import loop as train  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(sharding.MeshSpec(**mesh_cfg))
  teacher, student = _models()
  t_shard = sharding.param_shardings(teacher, mesh)
  t_params = _teacher_params(teacher, t_shard)
  tok = tokenizers.from_config("byte")
  it = data.make_train_iterator(_data_cfg(corpus_glob), tok, workdir, batch_size=BATCH, seed=0,
                                fraction=1.0, process_index=jax.process_index(),
                                process_count=jax.process_count())
  if sigterm_at:
    it = _SigtermAt(it, sigterm_at)
  stage_dir = os.path.join(workdir, stage)
  os.makedirs(stage_dir, exist_ok=True)
  res = train.run(name=stage, lm=student, mesh=mesh, stage_dir=stage_dir, data_iter=it,
                  steps=steps, loss_fn=_loss_fn(teacher, student), tx=_optimizer(), seed=0,
                  checkpoint_every=steps, log_every=1, teacher_params=t_params,
                  teacher_shardings=t_shard, is_main=jax.process_index() == 0)
  return res, [(s, m) for s, m in res.history]


class _SigtermAt:
  """Data iterator that signals its own process when batch `at` (1-based) is drawn."""

  def __init__(self, it, at: int):
    self.it, self.at, self.drawn = it, at, 0

  def __next__(self):
    self.drawn += 1
    if self.drawn == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    return next(self.it)

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def _child_preempt(pid: int, workdir: str, corpus_glob: str, phase: str) -> dict:
  """phase 'first': an uninterrupted 2x-long run, then a run where only process 0 gets
  SIGTERM during step 3; phase 'resume': the interrupted run again (fresh processes)."""
  from distill import errors  # pylint: disable=import-outside-toplevel
  out = {"pid": pid}
  if phase == "first":
    distill_run(workdir, corpus_glob, MULTI_MESH, "full", steps=2 * STEPS)
    try:
      distill_run(workdir, corpus_glob, MULTI_MESH, "pre", steps=2 * STEPS,
                  sigterm_at=3 if pid == 0 else 0)
      out["preempted"] = False
    except errors.Preempted as e:  # the CLI's clean exit (code 0)
      out["preempted"], out["message"] = True, str(e)
  else:
    _, history = distill_run(workdir, corpus_glob, MULTI_MESH, "pre", steps=2 * STEPS)
    out["resumed_steps"] = [s for s, _ in history]
  return out


def _child(pid: int, port: int, workdir: str, phase: str = "") -> None:
  t0 = time.time()
  import jax  # pylint: disable=import-outside-toplevel
  # Gloo is the default in this jax; set it anyway so a changed default cannot turn the
  # cross-process all-reduces into an "unimplemented" error.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                             initialization_timeout=60)
  assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
  with open(os.path.join(workdir, "corpus.txt")) as f:
    corpus_glob = f.read()
  t = time.time()
  if phase:
    out = _child_preempt(pid, workdir, corpus_glob, phase)
  else:
    _, history = distill_run(workdir, corpus_glob, MULTI_MESH, "multi")
    out = {"pid": pid, "history": history, "local_devices": jax.local_device_count()}
  print(f"child {pid}: init+run {time.time() - t0:.1f}s, run {time.time() - t:.1f}s", flush=True)
  with open(os.path.join(workdir, f"child{pid}{phase}.json"), "w") as f:
    json.dump(out, f)
  jax.distributed.shutdown()


def _prepare_workdir(workdir: str):
  """(workdir, corpus glob): the corpus written, its glob left for the children, and the token
  streams packed once here so the children only memory-map them."""
  from distill import data  # pylint: disable=import-outside-toplevel
  corpus_glob = _write_corpus(os.path.join(workdir, "corpus"))
  with open(os.path.join(workdir, "corpus.txt"), "w") as f:
    f.write(corpus_glob)
  data.prepare(_data_cfg(corpus_glob), workdir)
  return workdir, corpus_glob


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_checkpoint_restores_on_another_mesh(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from distill.train import checkpoint  # pylint: disable=import-outside-toplevel
  from distill.models import sharding  # pylint: disable=import-outside-toplevel
  from distill.train import step as step_lib  # pylint: disable=import-outside-toplevel
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  t0 = time.time()
  workdir, corpus_glob = _prepare_workdir(str(tmp_path))
  children = _launch_children(workdir, timeout=150)
  t_multi = time.time() - t0

  ref_res, ref_hist = distill_run(workdir, corpus_glob, MULTI_MESH, "single")
  assert [s for s, _ in ref_hist] == list(range(1, STEPS + 1))
  for child in children:
    assert child["local_devices"] == 4
    assert [s for s, _ in child["history"]] == [s for s, _ in ref_hist]
    for (s, m), (_, ref) in zip(child["history"], ref_hist):
      for k in ("loss", "divergence", "ce", "grad_norm"):
        np.testing.assert_allclose(m[k], ref[k], rtol=1e-5, err_msg=f"step {s} {k}")
  # Losses move, so the comparison above is not between three copies of one number.
  assert len({round(m["loss"], 6) for _, m in ref_hist}) > 1

  # The checkpoint both processes wrote restores here, onto a different mesh.
  teacher, student = _models()
  mesh = sharding.make_mesh(sharding.MeshSpec(**RESTORE_MESH))
  built = step_lib.make_step(_loss_fn(teacher, student), _optimizer(), student, mesh)
  p_shard = built.param_shardings
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "multi", "checkpoints"), every=STEPS)
  restored = ckpt.restore_latest(checkpoint.abstract_like(built.abstract, built.state_shardings))
  ckpt.close()
  assert restored is not None, "no checkpoint from the 2-process run"
  step, state, data_state = restored
  assert step == STEPS and int(state.step) == STEPS
  assert data_state == {"next_index": STEPS}, data_state
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                              jax.tree.leaves(p_shard)):
    assert leaf.sharding.mesh.shape == mesh.shape and leaf.sharding.spec == sh.spec, path
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
               state.params, ref_res.params)
  print(f"2-process run {t_multi:.1f}s, total {time.time() - t0:.1f}s")


def _launch_children(workdir: str, phase: str = "", timeout: int = 300) -> list:
  """Run the 2 children (this module, `phase`) to completion; their JSON outputs."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
  procs = [subprocess.Popen([sys.executable, "-m", "tests.test_multihost", str(pid), str(port),
                             workdir] + ([phase] if phase else []), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for pid in range(2)]
  logs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    logs.append(out)
  for pid, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"child {pid} ({phase or 'run'}) failed:\n{log[-4000:]}"
  outs = []
  for pid in range(2):
    with open(os.path.join(workdir, f"child{pid}{phase}.json")) as f:
      outs.append(json.load(f))
  return outs


@pytest.mark.slow  # two launches of 2 processes, 3 runs of 6 steps each (~2 min)
def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_bitwise(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from distill.train import checkpoint  # pylint: disable=import-outside-toplevel
  from distill.models import sharding  # pylint: disable=import-outside-toplevel
  from distill.train import step as step_lib  # pylint: disable=import-outside-toplevel
  workdir, corpus_glob = _prepare_workdir(str(tmp_path))
  first = _launch_children(workdir, "first")
  # Only process 0 was signalled; both stopped, cleanly, after the same step.
  assert [c["preempted"] for c in first] == [True, True], first
  assert "checkpoint saved at step 3" in first[0]["message"], first[0]["message"]
  assert first[0]["message"] == first[1]["message"]
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "pre", "checkpoints"))
                 if d.isdigit())
  assert steps == [3], steps
  resumed = _launch_children(workdir, "resume")
  for c in resumed:
    assert c["resumed_steps"][-1] == 2 * STEPS
  # The resumed run ends bitwise equal to the uninterrupted one (both read back here).
  _, student = _models()
  mesh = sharding.make_mesh(sharding.MeshSpec(**RESTORE_MESH))
  tx = _optimizer()
  abstract = jax.eval_shape(
      lambda k: step_lib.TrainState(jax.numpy.zeros((), jax.numpy.int32), student.init(k),
                                 tx.init(student.init(k))), jax.random.key(0))
  s_shard = step_lib.state_shardings(abstract, sharding.param_shardings(student, mesh), mesh)
  states = {}
  for stage in ("full", "pre"):
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, stage, "checkpoints"), every=2 * STEPS)
    step, states[stage], _ = ckpt.restore_latest(checkpoint.abstract_like(abstract, s_shard))
    ckpt.close()
    assert step == 2 * STEPS
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               states["full"].params, states["pre"].params)


if __name__ == "__main__":
  _child(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
