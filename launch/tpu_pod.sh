#!/usr/bin/env bash
# Run distill on every worker of a Cloud TPU VM slice: create -> install -> run -> delete.
#
# Usage (all settings are environment variables; only CONFIG and WORKDIR are required):
#
#   TPU_NAME=distill-v5e ZONE=us-west4-a ACCELERATOR=v5litepod-256 \
#   RUNTIME=v2-alpha-tpuv5-lite \
#   CONFIG=configs/tpu_v5e_gemma7b_to_300m.py WORKDIR=/mnt/shared/runs/gemma7b-300m \
#   EXTRA="--config.teacher.checkpoint=hf:/mnt/models/gemma-7b --config.data.tokenizer=/mnt/models/gemma-7b" \
#   launch/tpu_pod.sh
#
# Steps (each is a plain gcloud command you can run by hand):
#   1. gcloud compute tpus queued-resources create "$TPU_NAME-qr" --node-id="$TPU_NAME" \
#        --zone="$ZONE" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" [--spot]
#      then wait until the queued resource is ACTIVE (QUEUED=0 uses `tpu-vm create` instead).
#   2. gcloud compute tpus tpu-vm scp --recurse <repo> "$TPU_NAME": --worker=all
#      gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --command="pip install ..."
#   3. gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --command=\
#        "cd distill && python -m distill.main --config=$CONFIG --workdir=$WORKDIR $EXTRA"
#      Every worker runs the same command; jax.distributed.initialize() finds the others
#      from the TPU metadata (distill.main calls it when DISTILL_MULTIHOST=1, as this script sets, or TPU_WORKER_HOSTNAMES).
#      Output of all workers streams here and to $LOGDIR/<TPU_NAME>.log; only process 0 prints
#      progress and writes reports.
#   4. gcloud compute tpus queued-resources delete "$TPU_NAME-qr" --force (KEEP=1 skips it).
#
# The workdir must be a path every worker mounts (gcsfuse bucket, Filestore, NFS): orbax
# writes one checkpoint from all hosts there and a re-run resumes from it. (Plain gs:// URLs
# are not supported: the pipeline writes its reports with open().)
# Multi-slice: set SLICES=n (queued resource with --node-count=n) and --config.mesh.slices=n.
# Expected runtime: slice creation 2-15 min (queued resources may wait longer), install
# ~3 min, then the config's own runtime (see its docstring); deletion ~2 min.
set -euo pipefail

: "${CONFIG:?set CONFIG=configs/<file>.py}"
: "${WORKDIR:?set WORKDIR to a path every worker mounts (gcsfuse, Filestore, NFS)}"
TPU_NAME="${TPU_NAME:-distill-tpu}"
ZONE="${ZONE:-us-west4-a}"
ACCELERATOR="${ACCELERATOR:-v5litepod-16}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"
PROJECT="${PROJECT:-}"
QUEUED="${QUEUED:-1}"
SPOT="${SPOT:-0}"
SLICES="${SLICES:-1}"
KEEP="${KEEP:-0}"
EXTRA="${EXTRA:-}"
LOGDIR="${LOGDIR:-logs}"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="distill"

gc=(gcloud)
if [[ -n "$PROJECT" ]]; then
  gc+=(--project="$PROJECT")
fi

log() { printf '[tpu_pod %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

create() {
  if [[ "$QUEUED" == "1" ]]; then
    local extra=()
    [[ "$SPOT" == "1" ]] && extra+=(--spot)
    if [[ "$SLICES" -gt 1 ]]; then
      extra+=(--node-count="$SLICES" --node-prefix="$TPU_NAME")
    else
      extra+=(--node-id="$TPU_NAME")
    fi
    log "queued resource $TPU_NAME-qr: $ACCELERATOR x $SLICES in $ZONE"
    "${gc[@]}" compute tpus queued-resources create "$TPU_NAME-qr" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${extra[@]}"
    local state=""
    until [[ "$state" == "ACTIVE" ]]; do
      sleep 30
      state="$("${gc[@]}" compute tpus queued-resources describe "$TPU_NAME-qr" \
        --zone="$ZONE" --format='value(state.state)')"
      log "queued resource state: $state"
      if [[ "$state" == "FAILED" || "$state" == "SUSPENDED" ]]; then
        log "queued resource $state; giving up"
        return 1
      fi
    done
  else
    local extra=()
    [[ "$SPOT" == "1" ]] && extra+=(--spot)
    log "tpu-vm $TPU_NAME: $ACCELERATOR in $ZONE"
    "${gc[@]}" compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${extra[@]}"
  fi
}

# Names of the TPU VMs: one per slice (multi-slice queued resources name them <prefix>-<i>).
nodes() {
  if [[ "$SLICES" -gt 1 ]]; then
    local i
    for ((i = 0; i < SLICES; i++)); do echo "$TPU_NAME-$i"; done
  else
    echo "$TPU_NAME"
  fi
}

on_all() {
  # Runs $1 on every worker of every slice, in parallel; fails if any worker fails.
  local node pids=()
  while read -r node; do
    "${gc[@]}" compute tpus tpu-vm ssh "$node" --zone="$ZONE" --worker=all \
      --command="$1" &
    pids+=($!)
  done < <(nodes)
  local pid rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return "$rc"
}

install() {
  local node
  log "copying $REPO_DIR to every worker"
  while read -r node; do
    "${gc[@]}" compute tpus tpu-vm scp --recurse "$REPO_DIR" "$node":"$REMOTE_DIR" \
      --zone="$ZONE" --worker=all
  done < <(nodes)
  log "installing requirements + jax[tpu]"
  on_all "cd $REMOTE_DIR && pip install -q -r requirements.txt && pip install -q -U 'jax[tpu]'"
}

run() {
  mkdir -p "$LOGDIR"
  local cmd="cd $REMOTE_DIR && DISTILL_MULTIHOST=1 python -m distill.main --config=$CONFIG --workdir=$WORKDIR $EXTRA"
  log "running on all workers: $cmd"
  on_all "$cmd" 2>&1 | tee "$LOGDIR/$TPU_NAME.log"
}

delete() {
  if [[ "$KEEP" == "1" ]]; then
    log "KEEP=1: leaving $TPU_NAME up; delete it with: $0 delete"
    return 0
  fi
  log "deleting $TPU_NAME"
  if [[ "$QUEUED" == "1" ]]; then
    "${gc[@]}" compute tpus queued-resources delete "$TPU_NAME-qr" --zone="$ZONE" --force --quiet
  else
    "${gc[@]}" compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
  fi
}

main() {
  case "${1:-all}" in
    create) create ;;
    install) install ;;
    run) run ;;
    delete) KEEP=0 delete ;;
    all)
      create
      # Delete the slice whatever happens next (a failed run must not keep billing).
      trap delete EXIT
      install
      run
      ;;
    *)
      echo "usage: $0 [all|create|install|run|delete]" >&2
      return 2
      ;;
  esac
}

main "$@"
