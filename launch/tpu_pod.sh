#!/usr/bin/env bash
# Run jaxpref on every worker of a Cloud TPU VM pod slice. Every worker runs the same
#
#   python3 -m jaxpref.main --config=configs/NAME.py --workdir=DIR [overrides] --config.distributed.initialize=True
#
# and jax.distributed.initialize() finds the pod itself (worker list, this worker's id, coordinator = worker 0).
#
#   launch/tpu_pod.sh [--dry-run] [--create ACCELERATOR_TYPE] [--version RUNTIME] TPU_NAME ZONE \
#       --config=configs/NAME.py --workdir=gs://bucket/run [--config.x=y ...]
#
# Steps: (--create: make the TPU VM, e.g. --create v5litepod-16 --version v2-alpha-tpuv5-lite), pack this
# checkout (tracked and unignored files: no .venv, no .git) into a tarball, copy it to every worker, unpack it
# in ~/jaxpref, install jaxpref with the TPU extra, run. Options may stand anywhere; TPU_NAME and ZONE are the
# first two bare words. Write overrides as --key=value. --dry-run prints each command (shell-quoted, one a
# line) instead of running it.
set -euo pipefail

usage="usage: $0 [--dry-run] [--create TYPE] [--version RUNTIME] TPU_NAME ZONE --config=configs/NAME.py --workdir=DIR [--config.x=y ...]"
dry=0; create=""; version="tpu-ubuntu2204-base"; positional=(); config=(); workdir=(); rest=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --create) create="${2:?$usage}"; shift 2 ;;
    --create=*) create="${1#--create=}"; shift ;;
    --version) version="${2:?$usage}"; shift 2 ;;
    --version=*) version="${1#--version=}"; shift ;;
    # absl reads --config.x=y overrides only after --config=FILE, so the config file always goes first.
    --config=*) config=("$1"); shift ;;
    --config) config=("--config=${2:?$usage}"); shift 2 ;;
    --workdir=*) workdir=("$1"); shift ;;
    --workdir) workdir=("--workdir=${2:?$usage}"); shift 2 ;;
    -*) rest+=("$1"); shift ;;
    *) if [[ ${#positional[@]} -lt 2 ]]; then positional+=("$1"); else rest+=("$1"); fi; shift ;;
  esac
done
if [[ ${#positional[@]} -lt 2 ]]; then echo "error: give TPU_NAME and ZONE. $usage" >&2; exit 2; fi
if [[ ${#config[@]} -eq 0 ]]; then echo "error: --config=configs/NAME.py is missing. $usage" >&2; exit 2; fi
if [[ ${#workdir[@]} -eq 0 ]]; then
  echo "error: --workdir=DIR is missing (a directory every worker can write, e.g. gs://bucket/run). $usage" >&2; exit 2
fi
tpu="${positional[0]}"; zone="${positional[1]}"

run() { if [[ $dry == 1 ]]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${TMPDIR:-/tmp}/jaxpref-${tpu}.tar.gz"
main_args="$(printf '%q ' "${config[@]}" "${workdir[@]}" "${rest[@]}")"
remote="mkdir -p ~/jaxpref && tar -xzf ~/jaxpref.tar.gz -C ~/jaxpref && cd ~/jaxpref && pip install -q -e '.[tpu]'"
remote+=" && python3 -m jaxpref.main ${main_args}--config.distributed.initialize=True"

if [[ -n "$create" ]]; then
  run gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" --accelerator-type="$create" --version="$version"
fi
# the files git would commit (tracked and unignored); outside a git checkout, all but .git and .venv
run bash -c "cd $(printf '%q' "$repo") && { git ls-files -z --cached --others --exclude-standard 2>/dev/null \
|| find . \( -name .git -o -name .venv \) -prune -o -type f -print0; } \
| tar --null --ignore-failed-read -czf $(printf '%q' "$tarball") -T -"
run gcloud compute tpus tpu-vm scp "$tarball" "$tpu":~/jaxpref.tar.gz --zone="$zone" --worker=all
run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote"
