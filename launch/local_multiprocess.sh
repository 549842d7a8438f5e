#!/usr/bin/env bash
# Run N jaxpref processes on this machine as one jax.distributed job on CPU (gloo collectives): the way to
# try a multi-host run without a cluster. Process i runs
#
#   JAX_PLATFORMS=cpu python -m jaxpref.main --config=... --workdir=... [overrides] \
#       --config.distributed.coordinator_address=127.0.0.1:PORT --config.distributed.num_processes=N \
#       --config.distributed.process_id=i --config.distributed.cpu_collectives=gloo
#
# Usage (options and N may stand anywhere; N is the first bare number; write overrides as --key=value):
#
#   launch/local_multiprocess.sh [--dry-run] [--port 12355] N --config=configs/NAME.py --workdir=DIR [--config.x=y ...]
#
# --dry-run prints the N command lines (shell-quoted, one per process) instead of running them. Output lines of
# process i are prefixed with [pi]; if one process fails, the others are stopped (SIGTERM, SIGKILL after 10 s) and
# its exit status is returned. SIGINT/SIGTERM to the script are passed on (jaxpref saves and exits 75).
# JAX_PLATFORMS defaults to cpu (set it to override); PYTHON picks the interpreter (default: python).
set -euo pipefail

usage="usage: $0 [--dry-run] [--port P] N --config=configs/NAME.py --workdir=DIR [--config.x=y ...]"
dry=0; port=12355; n=""; config=(); workdir=(); rest=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --port) port="${2:?$usage}"; shift 2 ;;
    --port=*) port="${1#--port=}"; shift ;;
    # absl reads --config.x=y overrides only after --config=FILE, so the config file always goes first.
    --config=*) config=("$1"); shift ;;
    --config) config=("--config=${2:?$usage}"); shift 2 ;;
    --workdir=*) workdir=("$1"); shift ;;
    --workdir) workdir=("--workdir=${2:?$usage}"); shift 2 ;;
    *) if [[ -z "$n" && "$1" =~ ^[0-9]+$ ]]; then n="$1"; else rest+=("$1"); fi; shift ;;
  esac
done
if [[ -z "$n" || "$n" -lt 1 ]]; then echo "error: give the number of processes N (a bare number). $usage" >&2; exit 2; fi
if [[ ${#config[@]} -eq 0 ]]; then echo "error: --config=configs/NAME.py is missing. $usage" >&2; exit 2; fi
if ! [[ "$port" =~ ^[0-9]+$ ]]; then echo "error: --port $port is not a port number. $usage" >&2; exit 2; fi
platforms="${JAX_PLATFORMS:-cpu}"
python="${PYTHON:-python}"

command_line() {  # the exact argv of process $1
  cmd=(env "JAX_PLATFORMS=${platforms}" "$python" -m jaxpref.main "${config[@]}" "${workdir[@]}" "${rest[@]}"
       "--config.distributed.coordinator_address=127.0.0.1:${port}" "--config.distributed.num_processes=${n}"
       "--config.distributed.process_id=$1" "--config.distributed.cpu_collectives=gloo")
}

if [[ $dry == 1 ]]; then
  for ((i = 0; i < n; i++)); do command_line "$i"; printf '%q ' "${cmd[@]:1}" | sed 's/ $//'; echo; done
  exit 0
fi

pids=(); signalled=0
alive() { local p out=(); for p in "$@"; do kill -0 "$p" 2>/dev/null && out+=("$p"); done; echo "${out[@]:-}"; }
# A failed process leaves the others blocked in a collective (or in jax.distributed.initialize), where jaxpref's
# SIGTERM handler (finish the step, save, exit 75) cannot run: ask with SIGTERM, then SIGKILL after 10 s.
stop_all() {
  local left; left=$(alive "${pids[@]}"); [[ -z "$left" ]] && return 0
  kill -TERM $left 2>/dev/null || true
  for _ in $(seq 20); do left=$(alive $left); [[ -z "$left" ]] && return 0; sleep 0.5; done
  kill -KILL $left 2>/dev/null || true
}
# Ctrl-C / SIGTERM to this script (a preemption): pass SIGTERM on, so that each process saves and exits 75;
# a second one kills them.
on_signal() {
  if [[ $signalled == 1 ]]; then kill -KILL "${pids[@]}" 2>/dev/null || true; else kill -TERM "${pids[@]}" 2>/dev/null || true; fi
  signalled=1
}
trap on_signal INT TERM
for ((i = 0; i < n; i++)); do
  command_line "$i"
  "${cmd[@]}" > >(sed -u "s/^/[p${i}] /") 2>&1 &
  pids+=($!)
done
# Poll rather than `wait -n`: a process that stop_all killed may already be reaped, and `wait -n` on it fails.
status=0; stopped=0; running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  left=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); continue; fi
    rc=0; wait "$pid" || rc=$?  # bash keeps the status of a reaped child
    if [[ $rc -ne 0 && $status -eq 0 ]]; then status=$rc; fi
  done
  running=("${left[@]}")
  if [[ $status -ne 0 && $stopped -eq 0 && $signalled -eq 0 && ${#running[@]} -gt 0 ]]; then stopped=1; stop_all; fi
  if [[ ${#running[@]} -gt 0 ]]; then sleep 0.5; fi
done
wait  # the output filters
exit $status
