#!/usr/bin/env bash
# `make test` on a clean clone of main while BUSY CPU-bound processes keep the cores taken.
#   tools/suite_under_load.sh [RUNS] [BUSY]    (defaults: 3 runs, 2 busy loops)
# Prints the load average, then each run's exit status and seconds; stops at the first red run.
set -uo pipefail
runs=${1:-3} busy=${2:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT INT TERM
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $busy busy loops"
for _ in $(seq "$busy"); do python3 -c "while True: pass" & pids+=($!); done
for run in $(seq "$runs"); do
  work=$(mktemp -d)
  git clone -q "$repo" "$work/clone"
  start=$(date +%s)
  make -C "$work/clone" test > "$work/make.log" 2>&1
  rc=$?
  summary=$(grep -E "[0-9]+ (passed|failed)" "$work/make.log" | tail -1 | tr -d "=")
  echo "run $run: exit $rc in $(( $(date +%s) - start )) s (venv set-up included):$summary"
  [ "$rc" -eq 0 ] || { echo "log: $work/make.log"; exit "$rc"; }
  rm -rf "$work"
done
