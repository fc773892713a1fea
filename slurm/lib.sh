# slurm/lib.sh - helpers sourced by every sbatch script in slurm/ (not run on its own).
#
# Why a library: each job type needs the same three things - find the checkout and its Python (a venv, or a pyxis
# container), load the cluster's NCCL/InfiniBand settings from ONE overridable file, and log where it runs.
#
# Inputs (environment):
#   HUATUO_HOME         the checkout (default: $SLURM_SUBMIT_DIR); scripts run from Slurm's spool copy, so they
#                       cannot find the repository from their own path
#   HUATUO_PYTHON       interpreter (default: $HUATUO_HOME/.venv/bin/python if it exists, else python3)
#   HUATUO_CLUSTER_ENV  file with NCCL/IB/site settings (default: $HUATUO_HOME/slurm/cluster.env)
#   HUATUO_CONTAINER_IMAGE / HUATUO_CONTAINER_MOUNTS   run tasks in a pyxis container (e.g. nvcr.io#nvidia/pytorch:24.12-py3)

huatuo_log() { echo "[huatuo $(date -u +%FT%TZ) job=${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ task=$SLURM_ARRAY_TASK_ID}] $*"; }
huatuo_die() { huatuo_log "ERROR: $*" >&2; exit 1; }

huatuo_setup() {
  HUATUO_HOME=${HUATUO_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
  [ -d "$HUATUO_HOME/megatron_huatuo" ] || huatuo_die "HUATUO_HOME=$HUATUO_HOME is not a megatron-huatuo checkout"
  export HUATUO_HOME
  local env_file=${HUATUO_CLUSTER_ENV:-$HUATUO_HOME/slurm/cluster.env}
  if [ -r "$env_file" ]; then
    # shellcheck disable=SC1090
    . "$env_file"
  else
    [ -z "${HUATUO_CLUSTER_ENV:-}" ] || huatuo_die "HUATUO_CLUSTER_ENV=$env_file is not readable"
  fi
  if [ -n "${HUATUO_CONTAINER_IMAGE:-}" ]; then
    HUATUO_PYTHON=${HUATUO_PYTHON:-python}          # the image's interpreter
    HUATUO_SRUN_CONTAINER=(--container-image="$HUATUO_CONTAINER_IMAGE" --container-workdir="$HUATUO_HOME"
                           --container-mounts="$HUATUO_HOME:$HUATUO_HOME${HUATUO_CONTAINER_MOUNTS:+,$HUATUO_CONTAINER_MOUNTS}")
  else
    if [ -z "${HUATUO_PYTHON:-}" ]; then
      if [ -x "$HUATUO_HOME/.venv/bin/python" ]; then HUATUO_PYTHON=$HUATUO_HOME/.venv/bin/python; else HUATUO_PYTHON=python3; fi
    fi
    HUATUO_SRUN_CONTAINER=()
  fi
  export HUATUO_PYTHON
  export PYTHONPATH="$HUATUO_HOME${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
  cd "$HUATUO_HOME" || huatuo_die "cannot cd to $HUATUO_HOME"
  huatuo_log "host=$(hostname) nodes=${SLURM_JOB_NODELIST:-?} restart=${SLURM_RESTART_COUNT:-0} python=$HUATUO_PYTHON${HUATUO_CONTAINER_IMAGE:+ container=$HUATUO_CONTAINER_IMAGE}"
}
