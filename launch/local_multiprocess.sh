#!/usr/bin/env bash
# Run N jaxpref processes on this machine as one jax.distributed job (CPU: gloo collectives).
#
#   launch/local_multiprocess.sh [--dry-run] [--port 12355] N --config=configs/NAME.py --workdir=DIR [--config.x=y ...]
#
# Each process gets --config.distributed.{coordinator_address,num_processes,process_id}; process 0 logs.
set -euo pipefail
dry=0; port=12355
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --port) port="$2"; shift 2 ;;
    *) break ;;
  esac
done
n="${1:?usage: $0 [--dry-run] [--port P] N --config=... --workdir=... [overrides]}"; shift
pids=()
for ((i = 0; i < n; i++)); do
  cmd=(python -m jaxpref.main "$@" "--config.distributed.coordinator_address=127.0.0.1:${port}"
       "--config.distributed.num_processes=${n}" "--config.distributed.process_id=${i}"
       "--config.distributed.cpu_collectives=gloo")
  if [[ $dry == 1 ]]; then
    echo "${cmd[*]}"
  else
    "${cmd[@]}" > >(sed "s/^/[p${i}] /") 2>&1 &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
