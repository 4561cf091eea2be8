#!/usr/bin/env bash
# Run a spelke_jax job on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_vm.sh TPU_NAME ZONE -- --config=configs/convert.py --workdir=gs://bucket/run
#
# Each worker gets a venv with the TPU wheel of jax, then runs spelke_jax.main with
# SPELKE_JAX_DISTRIBUTED=1 (jax.distributed.initialize() auto-detects the pod). Every worker
# must run the same command: JAX programs are SPMD across hosts.
set -euo pipefail
name=$1; zone=$2; shift 2; [ "${1:-}" = "--" ] && shift
repo=${SPELKE_JAX_REPO:-https://github.com/spelke-jax/spelke_jax}
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command "
  set -e
  [ -d spelke_jax ] || git clone -q $repo spelke_jax
  cd spelke_jax && git pull -q
  [ -d .venv ] || python3.11 -m venv .venv
  . .venv/bin/activate
  pip install -q -r requirements.txt 'jax[tpu]' -e .
  SPELKE_JAX_DISTRIBUTED=1 python -m spelke_jax.main$args
"
