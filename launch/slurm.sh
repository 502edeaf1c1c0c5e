#!/usr/bin/env bash
# Submits launch/slurm.sbatch with the SBATCH options for N nodes x G GPUs.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh --nodes N --gpus-per-node G --config CONFIG --workdir SHARED_DIR
                       [OPTIONS] [-- MAIN_ARGS...]

Submits launch/slurm.sbatch (run from the repository root, on shared storage).

Options:
  --nodes N            nodes (default: 1)
  --gpus-per-node G    GPUs per node (default: 1)
  --per node|gpu       one JAX process per node driving its G GPUs (default, simplest),
                       or one process per GPU (G tasks per node); see launch/slurm.sbatch
  --cpus-per-gpu C     CPU cores per GPU, for input decoding (default: 8)
  --config SPEC        config with variants, e.g. configs/multitask.py:model=resnet152
  --workdir DIR        on storage every node mounts (checkpoints, metrics, report)
  --partition P, --account A, --time HH:MM:SS, --job-name NAME   passed to sbatch
  --cuda 12|13         the jax[cuda12] or jax[cuda13] build to install (default: 12)
  --venv DIR           the environment to install into / run from (default: REPO/.venv-cudaXX)
  --dry-run            print the sbatch command instead of submitting
  -h, --help           this help

Example, 2 nodes x 8 GPUs (16 GPUs; batch_size must divide by 16):
  launch/slurm.sh --nodes 2 --gpus-per-node 8 --partition gpu --time 08:00:00 \
      --config=configs/multitask.py:model=resnet152 --workdir=/shared/fgmask/multitask \
      -- --config.batch_size=256
  Rerun it to resume after a preemption or a time limit: the workdir's latest checkpoint
  and the data position are restored.
EOF
}

die() {
  echo "slurm.sh: $*" >&2
  exit 2
}

nodes=1 gpus=1 per="node" cpus_per_gpu=8 config="" workdir="" cuda=12 venv="" dry_run=0
sbatch_extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    --dry-run) dry_run=1; shift ;;
    --*=*) key="${1%%=*}"; value="${1#*=}"; shift; set -- "$key" "$value" "$@" ;;
    --nodes | --gpus-per-node | --per | --cpus-per-gpu | --config | --workdir | --cuda | \
      --venv | --partition | --account | --time | --job-name)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --nodes) nodes="$2" ;;
        --gpus-per-node) gpus="$2" ;;
        --per) per="$2" ;;
        --cpus-per-gpu) cpus_per_gpu="$2" ;;
        --config) config="$2" ;;
        --workdir) workdir="$2" ;;
        --cuda) cuda="$2" ;;
        --venv) venv="$2" ;;
        *) sbatch_extra+=("$1=$2") ;;
      esac
      shift 2 ;;
    *) die "unknown argument '$1' (see --help; arguments for main go after --)" ;;
  esac
done
for value in "$nodes" "$gpus" "$cpus_per_gpu"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "--nodes, --gpus-per-node, --cpus-per-gpu: positive integers, got '$value'"
done
[[ -n "$config" ]] || die "--config is required"
[[ -n "$workdir" ]] || die "--workdir is required (on shared storage)"
[[ "$cuda" == 12 || "$cuda" == 13 ]] || die "--cuda is 12 or 13, got '$cuda'"
case "$per" in
  node) tasks_per_node=1; cpus_per_task=$((cpus_per_gpu * gpus)) ;;
  gpu) tasks_per_node="$gpus"; cpus_per_task="$cpus_per_gpu" ;;
  *) die "--per is node or gpu, got '$per'" ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exports="ALL,FGMASK_EXTRA=cuda$cuda"
if [[ -n "$venv" ]]; then exports+=",FGMASK_VENV=$venv"; fi
cmd=(sbatch --nodes="$nodes" --ntasks-per-node="$tasks_per_node" --gres="gpu:$gpus"
  --cpus-per-task="$cpus_per_task" --chdir="$repo_root" --export="$exports"
  "${sbatch_extra[@]}" "$repo_root/launch/slurm.sbatch"
  --config="$config" --workdir="$workdir" "$@")
if [[ $dry_run == 1 ]]; then
  line=""
  for word in "${cmd[@]}"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then line+="$word "; else line+="'${word//\'/\'\\\'\'}' "; fi
  done
  printf '%s\n' "${line% }"
else
  command -v sbatch >/dev/null || die "sbatch not found: run this on a SLURM login node"
  "${cmd[@]}"
fi
