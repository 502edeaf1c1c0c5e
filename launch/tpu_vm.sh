#!/usr/bin/env bash
# Installs fgmask_jax on every worker of a Cloud TPU VM (a pod slice or a single host)
# and runs the same training command on all of them. See docs/scaling.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/DIR
                        [OPTIONS] [-- MAIN_ARGS...]

On every worker of TPU VM NAME (gcloud compute tpus tpu-vm ssh --worker=all):
  1. copy   this checkout's committed files (git archive HEAD), or clone --repo;
  2. install Python 3.12 (uv) in REMOTE_DIR/.venv and pip install 'REMOTE_DIR[tpu]';
  3. run    python -m fgmask_jax.main --config=CONFIG --workdir=WORKDIR MAIN_ARGS
            on all workers at once; JAX detects the pod slice and joins the workers.

Options:
  --name NAME          TPU VM name (required)
  --zone ZONE          its zone, e.g. us-central2-b (required)
  --project PROJECT    Google Cloud project (default: gcloud's configured one)
  --config SPEC        config with variants, e.g. configs/multitask.py:model=resnet152
  --workdir URL        where checkpoints, metrics and the report go: gs://... so that
                       every worker sees the same checkpoints (required unless --install-only)
  --repo URL           clone this repository on the workers instead of copying the checkout
  --ref REF            with --repo: branch, tag or commit (default: main)
  --remote-dir DIR     install folder on each worker, relative to its home (default: fgmask_jax)
  --python VERSION     Python version for the workers' environment (default: 3.12)
  --manual-dir DIR     copy this local folder (FGNET-MASK_dataset.zip) to every worker's
                       ~/tensorflow_datasets/downloads/manual/ (fgnet_mask only)
  --install-only       copy and install, do not run
  --skip-install       run only (the workers were installed before)
  --background         run detached (nohup); each worker logs to REMOTE_DIR/run.log
  --allow-local-workdir  accept a workdir that is not gs:// (a filesystem shared by all workers)
  --dry-run            print the commands instead of running them
  -h, --help           this help

Example (a v4-32 slice: 4 workers):
  launch/tpu_vm.sh --name my-tpu --zone us-central2-b \
      --config=configs/multitask.py:model=resnet152 --workdir=gs://my-bucket/fgmask/multitask
  Rerun the same command (with --skip-install) to resume after a preemption.
EOF
}

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

name="" zone="" project="" config="" workdir="" repo="" ref="main"
remote_dir="fgmask_jax" python_version="3.12" manual_dir=""
install=1 run=1 background=0 allow_local=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    --install-only) run=0; shift ;;
    --skip-install) install=0; shift ;;
    --background) background=1; shift ;;
    --allow-local-workdir) allow_local=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --*=*) key="${1%%=*}"; value="${1#*=}"; shift; set -- "$key" "$value" "$@" ;;
    --name | --zone | --project | --config | --workdir | --repo | --ref | --remote-dir | \
      --python | --manual-dir)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --name) name="$2" ;;
        --zone) zone="$2" ;;
        --project) project="$2" ;;
        --config) config="$2" ;;
        --workdir) workdir="$2" ;;
        --repo) repo="$2" ;;
        --ref) ref="$2" ;;
        --remote-dir) remote_dir="$2" ;;
        --python) python_version="$2" ;;
        --manual-dir) manual_dir="$2" ;;
      esac
      shift 2 ;;
    *) die "unknown argument '$1' (see --help; arguments for main go after --)" ;;
  esac
done
[[ -n "$name" ]] || die "--name is required"
[[ -n "$zone" ]] || die "--zone is required"
[[ $install == 1 || $run == 1 ]] || die "--install-only and --skip-install together do nothing"
if [[ $run == 1 ]]; then
  [[ -n "$config" ]] || die "--config is required to run"
  [[ -n "$workdir" ]] || die "--workdir is required to run"
  if [[ "$workdir" != gs://* && $allow_local == 0 ]]; then
    die "--workdir=$workdir: each TPU VM worker has its own disk, so checkpoints must be on \
gs:// (or pass --allow-local-workdir for a filesystem every worker mounts)"
  fi
fi
[[ -z "$manual_dir" || -d "$manual_dir" ]] || die "--manual-dir $manual_dir is not a folder"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
if [[ -n "$project" ]]; then where+=(--project="$project"); fi

# One shell word: as it is when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command (each word quoted) under --dry-run, else runs it.
run_cmd() {
  if [[ $dry_run == 1 ]]; then
    local word line=""
    for word in "$@"; do line+="$(quote "$word") "; done
    printf '%s\n' "${line% }"
  else
    "$@"
  fi
}

on_all_workers() {
  run_cmd "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"
}

q_remote_dir="$(quote "$remote_dir")"

if [[ $install == 1 ]]; then
  if [[ -n "$repo" ]]; then
    on_all_workers "set -e; if [ -d $q_remote_dir/.git ]; then git -C $q_remote_dir fetch --quiet origin; \
else git clone --quiet $(quote "$repo") $q_remote_dir; fi; \
git -C $q_remote_dir checkout --quiet $(quote "$ref")"
  else
    # The committed files only: uncommitted changes and local environments stay here.
    archive="${TMPDIR:-/tmp}/fgmask_jax_$$.tar.gz"
    run_cmd git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
    run_cmd "${gcloud_tpu[@]}" scp "$archive" "$name:fgmask_jax.tar.gz" "${where[@]}" --worker=all
    on_all_workers "set -e; mkdir -p $q_remote_dir; tar -xzf fgmask_jax.tar.gz -C $q_remote_dir; \
rm fgmask_jax.tar.gz"
    if [[ $dry_run == 0 ]]; then rm -f "$archive"; fi
  fi
  # TPU VM images ship an older Python: uv brings the version the project needs.
  on_all_workers "set -e; export PATH=\$HOME/.local/bin:\$PATH; \
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; \
cd $q_remote_dir; test -x .venv/bin/python || uv venv --quiet --python $(quote "$python_version") .venv; \
uv pip install --quiet --python .venv/bin/python '.[tpu]'"
  if [[ -n "$manual_dir" ]]; then
    on_all_workers "mkdir -p tensorflow_datasets/downloads/manual"
    run_cmd "${gcloud_tpu[@]}" scp --recurse "$manual_dir"/. \
      "$name:tensorflow_datasets/downloads/manual/" "${where[@]}" --worker=all
  fi
fi

if [[ $run == 1 ]]; then
  main_cmd=".venv/bin/python -m fgmask_jax.main"
  for arg in "--config=$config" "--workdir=$workdir" "$@"; do
    main_cmd+=" $(quote "$arg")"
  done
  if [[ $background == 1 ]]; then
    main_cmd="cd $q_remote_dir && nohup $main_cmd > run.log 2>&1 < /dev/null & \
echo started on \$(hostname), log in $q_remote_dir/run.log"
  else
    main_cmd="cd $q_remote_dir && $main_cmd"
  fi
  on_all_workers "$main_cmd"
fi
