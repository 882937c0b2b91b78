#!/usr/bin/env bash
# Multi-host runs without SLURM (cloud VMs, a few workstations): run this on every host with the same coordinator
# address and process count and a distinct process id. Each process drives every GPU its host shows it (one process
# per host). The commands that run multi-host: train-forecaster, train-diffusion, forecast, tune, tune-guidance and
# bench sampler.
#
#   host0$ experiments/slurm/launch_multihost.sh 10.0.0.1:12355 2 0 train-forecaster --config=hrrr_production --workdir=/shared/run
#   host1$ experiments/slurm/launch_multihost.sh 10.0.0.1:12355 2 1 train-forecaster --config=hrrr_production --workdir=/shared/run
#
# The coordinator (process 0) listens on the given port; if a peer never starts, JAX aborts the others after its
# timeout rather than hanging forever.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID DEF_JAX_COMMAND [flags...]" >&2
  exit 2
fi
coordinator=$1 num=$2 rank=$3
shift 3
case "$1" in
  train-forecaster|train-diffusion|forecast|tune|tune-guidance|bench) ;;
  *) echo "$0: $1 does not run multi-host (train-forecaster, train-diffusion, forecast, tune, tune-guidance and" \
       "bench sampler do)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../.."
exec .venv/bin/def-jax "$@" --config.parallel.coordinator_address="$coordinator" \
  --config.parallel.num_processes="$num" --config.parallel.process_id="$rank"
