#!/usr/bin/env bash
# Run jaxpref on every worker of a Cloud TPU VM pod slice. JAX detects the pod itself
# (jax.distributed.initialize with no arguments), so every worker runs the same command.
#
#   launch/tpu_pod.sh [--dry-run] [--create ACCELERATOR_TYPE] [--version RUNTIME] TPU_NAME ZONE \
#       --config=configs/NAME.py --workdir=gs://bucket/run [--config.x=y ...]
#
# --create makes the TPU VM first (e.g. --create v5litepod-16 --version v2-alpha-tpuv5-lite).
# Steps: (create), copy this checkout to all workers, install jaxpref with the TPU extra, run.
set -euo pipefail
dry=0; create=""; version="tpu-ubuntu2204-base"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --create) create="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    *) break ;;
  esac
done
tpu="${1:?usage: $0 [--dry-run] [--create TYPE] TPU_NAME ZONE --config=... --workdir=...}"; zone="${2:?zone}"; shift 2
run() { if [[ $dry == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -n "$create" ]]; then
  run gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" --accelerator-type="$create" --version="$version"
fi
run gcloud compute tpus tpu-vm scp --recurse "$repo" "$tpu":~/jaxpref --zone="$zone" --worker=all
args="$(printf '%q ' "$@")"
run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd ~/jaxpref && pip install -q -e '.[tpu]' && python -m jaxpref.main --config.distributed.initialize=True ${args}"
