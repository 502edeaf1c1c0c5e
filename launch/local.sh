#!/usr/bin/env bash
# Runs N processes of one multi-process JAX job on this machine, M CPU devices each.
#
# The same code path as a cluster job (jax.distributed, per-process data slices,
# only process 0 writing reports), on a laptop. See docs/scaling.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [OPTIONS] N M [--] ARGS...

Starts N processes of `python -m fgmask_jax.main ARGS` on this machine, each with
M CPU devices (N*M devices in all), joined through a coordinator on a free local
port: each process gets --coordinator_address, --num_processes and --process_id.
Logs go to LOG_DIR/process_I.log. Waits for all; if one fails, stops the others
and exits with its status. Ctrl-C stops them all.

Options:
  --log-dir DIR    where the per-process logs go (default: a new folder under /tmp)
  --port PORT      coordinator port (default: a free one)
  --module MODULE  Python module to run (default: fgmask_jax.main;
                   fgmask_jax.distributed only checks that the processes join)
  -h, --help       this help

Environment:
  PYTHON           the interpreter (default: .venv/bin/python if it exists, else python3)

Examples:
  launch/local.sh 2 2 -- --config=configs/multitask.py:data=synthetic,model=resnet_tiny,runlocal \
      --workdir=/tmp/fgmask/local2x2
  launch/local.sh --module fgmask_jax.distributed 2 4
EOF
}

die() {
  echo "local.sh: $*" >&2
  exit 2
}

log_dir=""
port=""
module="fgmask_jax.main"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --log-dir) [[ $# -ge 2 ]] || die "--log-dir needs a value"; log_dir="$2"; shift 2 ;;
    --log-dir=*) log_dir="${1#*=}"; shift ;;
    --port) [[ $# -ge 2 ]] || die "--port needs a value"; port="$2"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    --module) [[ $# -ge 2 ]] || die "--module needs a value"; module="$2"; shift 2 ;;
    --module=*) module="${1#*=}"; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || { usage >&2; exit 2; }
num_processes="$1"
devices="$2"
shift 2
if [[ "${1:-}" == "--" ]]; then shift; fi
[[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$num_processes'"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || die "M must be a positive integer, got '$devices'"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo_root/.venv/bin/python" ]]; then PYTHON="$repo_root/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || die "no Python interpreter '$PYTHON' (set PYTHON)"
if [[ -z "$port" ]]; then
  port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"
if [[ -z "$log_dir" ]]; then
  log_dir="$(mktemp -d "${TMPDIR:-/tmp}/fgmask_local.XXXXXX")"
fi
mkdir -p "$log_dir"

pids=()
stop_all() {
  # Each process leads its own process group (set -m below): signal the whole group,
  # so that helper processes (grain decoding workers) stop too.
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [[ $alive == 0 ]] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'echo "local.sh: interrupted; stopping all processes" >&2; exit 130' INT TERM

echo "local.sh: $num_processes processes x $devices CPU devices, coordinator localhost:$port, logs in $log_dir"
set -m  # each background process gets its own process group
for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
    "$PYTHON" -m "$module" "$@" \
    --coordinator_address="localhost:$port" --num_processes="$num_processes" --process_id="$i" \
    >"$log_dir/process_$i.log" 2>&1 &
  pids+=("$!")
done
set +m

# Poll rather than `wait -n`, which needs bash >= 5.1 to say which process ended.
remaining="$num_processes"
declare -a done_flags
while [[ $remaining -gt 0 ]]; do
  for ((i = 0; i < num_processes; i++)); do
    [[ -n "${done_flags[$i]:-}" ]] && continue
    kill -0 "${pids[$i]}" 2>/dev/null && continue
    status=0
    wait "${pids[$i]}" || status=$?
    done_flags[i]=1
    remaining=$((remaining - 1))
    if [[ $status -ne 0 ]]; then
      echo "local.sh: process $i failed (exit status $status); stopping the others." >&2
      echo "---- last lines of $log_dir/process_$i.log ----" >&2
      tail -n 30 "$log_dir/process_$i.log" >&2 || true
      exit "$status"
    fi
  done
  if [[ $remaining -gt 0 ]]; then sleep 0.2; fi
done
pids=()
echo "local.sh: all $num_processes processes finished; last lines of process 0:"
tail -n 5 "$log_dir/process_0.log"
