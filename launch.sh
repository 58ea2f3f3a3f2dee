#!/usr/bin/env bash
# Runs `python main.py ARGS...` as a multi-process JAX job.
#
#   bash launch.sh --tpu NAME --zone ZONE [--project P] [--repo_dir DIR] [--dry_run] -- ARGS...
#       Runs the same command on every worker of a Cloud TPU pod slice:
#         gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all \
#           --command="cd DIR && ECGJAX_DISTRIBUTED=auto python3 main.py ARGS..."
#       DIR (default: ecgjax, relative to the remote home) must hold this repo on every worker
#       (e.g. `gcloud compute tpus tpu-vm scp --recurse --worker=all . NAME:ecgjax`), and
#       --workdir and --config.data.path must be places every worker sees: gs://BUCKET/...
#       URLs (read and written directly; the VM's service account needs object read/write
#       on the bucket) or a shared mount (Filestore/NFS).
#       ECGJAX_DISTRIBUTED=auto makes main.py call jax.distributed.initialize() with no
#       arguments; JAX finds the workers from the TPU metadata server.
#
#   bash launch.sh --slurm [--dry_run] -- ARGS...
#       Inside an allocation (sbatch/salloc) runs the allocation's tasks, one JAX process each:
#         srun --kill-on-bad-exit=1 python main.py ARGS...
#       main.py sees SLURM_NTASKS > 1 and calls jax.distributed.initialize(), which reads
#       the coordinator, process count and id from SLURM's variables. One task per node that
#       owns all of the node's GPUs is the simplest layout. An sbatch script:
#         #SBATCH --nodes=2 --ntasks-per-node=1 --gpus-per-node=8
#         bash launch.sh --slurm -- --config=configs/hl.py --workdir=/shared/runs/hl
#
#   bash launch.sh --local N [--devices_per_process D] [--dry_run] -- ARGS...
#       Starts N processes on this machine, each with D (default 2) fake CPU devices, gloo
#       collectives and a coordinator on a free local port: the multi-host code path
#       (distributed init, per-process data, global arrays, Orbax barriers) without a
#       cluster. Output goes to WORKDIR/logs/process_I.log (WORKDIR from a local --workdir=,
#       else $ECGJAX_LOG_DIR or a temp dir) and, prefixed with [I], to stdout. Waits for all;
#       if one fails, the others are stopped and the exit status is the first failure's.
#
# Explicit coordinates work anywhere (the same thing --local does per process):
#   python main.py --coordinator_address=HOST:PORT --num_processes=N --process_id=I ARGS...
#   or env ECGJAX_COORDINATOR=HOST:PORT ECGJAX_NUM_PROCESSES=N ECGJAX_PROCESS_ID=I.
# Environment: PYTHON (default python3 remotely, $PYTHON or python locally);
# JAX_CPU_COLLECTIVES_IMPLEMENTATION (default gloo for --local). With --local, leave
# JAX_COMPILATION_CACHE_DIR unset: on CPU only process 0 hits that cache, and processes that
# reach their first collective more than 30 s apart make gloo give up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

mode="" tpu_name="" zone="" project="" repo_dir="ecgjax" num_local=0 devices=2 dry_run=0
while (($#)); do
  case "$1" in
    --tpu) mode=tpu; tpu_name="${2:?--tpu NAME}"; shift 2 ;;
    --tpu=*) mode=tpu; tpu_name="${1#*=}"; shift ;;
    --zone) zone="${2:?--zone ZONE}"; shift 2 ;;
    --zone=*) zone="${1#*=}"; shift ;;
    --project) project="${2:?--project P}"; shift 2 ;;
    --project=*) project="${1#*=}"; shift ;;
    --repo_dir) repo_dir="${2:?--repo_dir DIR}"; shift 2 ;;
    --repo_dir=*) repo_dir="${1#*=}"; shift ;;
    --slurm) mode=slurm; shift ;;
    --local) mode=local; num_local="${2:?--local N}"; shift 2 ;;
    --local=*) mode=local; num_local="${1#*=}"; shift ;;
    --devices_per_process) devices="${2:?--devices_per_process D}"; shift 2 ;;
    --devices_per_process=*) devices="${1#*=}"; shift ;;
    --dry_run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "launch.sh: unknown option $1 (main.py arguments go after --)" >&2; usage ;;
  esac
done
[[ -n "$mode" ]] || { echo "launch.sh: choose --tpu NAME, --slurm or --local N" >&2; usage; }
main_args=("$@")

run_or_print() {
  if ((dry_run)); then printf '%q ' "$@"; echo; else "$@"; fi
}

launch_tpu() {
  [[ -n "$zone" ]] || { echo "launch.sh: --tpu needs --zone" >&2; exit 2; }
  local remote
  remote="cd $(printf '%q' "$repo_dir") && ECGJAX_DISTRIBUTED=auto ${PYTHON:-python3} main.py"
  ((${#main_args[@]})) && remote+=" $(printf '%q ' "${main_args[@]}")"
  local cmd=(gcloud compute tpus tpu-vm ssh "$tpu_name" "--zone=$zone" --worker=all
             "--command=$remote")
  [[ -n "$project" ]] && cmd+=("--project=$project")
  run_or_print "${cmd[@]}"
}

launch_slurm() {
  if [[ -z "${SLURM_JOB_ID:-}" ]] && ((!dry_run)); then
    echo "launch.sh: --slurm runs inside an allocation (sbatch/salloc); see the header." >&2
    exit 2
  fi
  run_or_print srun --kill-on-bad-exit=1 "${PYTHON:-python}" "$ROOT/main.py" "${main_args[@]}"
}

# The value of --workdir in the main.py arguments, if any.
workdir_arg() {
  local i
  for ((i = 0; i < ${#main_args[@]}; i++)); do
    case "${main_args[i]}" in
      --workdir=*) echo "${main_args[i]#--workdir=}"; return ;;
      --workdir) echo "${main_args[i + 1]:-}"; return ;;
    esac
  done
}

free_port() {
  "${PYTHON:-python}" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

pids=()

stop_all() {  # TERM the processes this script started, then KILL what is left.
  local pid alive=0
  for pid in "${pids[@]}"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null && alive=1
  done
  ((alive)) || return 0
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.2
  done
  for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null; done
  return 0
}

launch_local() {
  [[ "$num_local" =~ ^[1-9][0-9]*$ ]] || { echo "launch.sh: --local N needs N >= 1" >&2; exit 2; }
  local workdir log_dir port xla_flags i
  workdir="$(workdir_arg)"
  if [[ -n "$workdir" && "$workdir" != *://* ]]; then  # (a URL workdir: logs stay local.)
    log_dir="$workdir/logs"
  else
    log_dir="${ECGJAX_LOG_DIR:-$(mktemp -d -t ecgjax_logs.XXXXXX)}"
  fi
  port="$(free_port)"
  # Our device count replaces any inherited one (pytest's conftest sets 8, for example).
  xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")"
  xla_flags="$xla_flags --xla_force_host_platform_device_count=$devices"
  if ((dry_run)); then
    for ((i = 0; i < num_local; i++)); do
      printf 'ECGJAX_COORDINATOR=127.0.0.1:%s ECGJAX_NUM_PROCESSES=%s ECGJAX_PROCESS_ID=%s ' \
        "$port" "$num_local" "$i"
      printf '%q ' "${PYTHON:-python}" "$ROOT/main.py" "${main_args[@]}"
      echo "> $log_dir/process_$i.log"
    done
    return 0
  fi
  mkdir -p "$log_dir"
  echo "launch.sh: $num_local processes x $devices CPU devices, coordinator 127.0.0.1:$port," \
       "logs in $log_dir" >&2
  trap 'stop_all; exit 130' INT TERM
  for ((i = 0; i < num_local; i++)); do
    # The pid after `&` is python's own; the process substitution only tees and prefixes.
    ECGJAX_COORDINATOR="127.0.0.1:$port" ECGJAX_NUM_PROCESSES="$num_local" \
    ECGJAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu XLA_FLAGS="$xla_flags" \
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="${JAX_CPU_COLLECTIVES_IMPLEMENTATION:-gloo}" \
      "${PYTHON:-python}" "$ROOT/main.py" "${main_args[@]}" \
      > >(tee "$log_dir/process_$i.log" | sed -u "s/^/[$i] /") 2>&1 < /dev/null &
    pids[i]=$!
  done
  local remaining=$num_local status=0 rc pid
  while ((remaining)); do
    for ((i = 0; i < num_local; i++)); do
      pid="${pids[i]}"
      [[ -n "$pid" ]] || continue
      kill -0 "$pid" 2>/dev/null && continue
      rc=0
      wait "$pid" || rc=$?
      pids[i]=""
      remaining=$((remaining - 1))
      if ((rc != 0 && status == 0)); then
        status=$rc
        echo "launch.sh: process $i exited with status $rc (log: $log_dir/process_$i.log);" \
             "stopping the others" >&2
        stop_all
      fi
    done
    ((remaining)) && sleep 0.2
  done
  trap - INT TERM
  wait  # the tee/prefix pipes
  return "$status"
}

case "$mode" in
  tpu) launch_tpu ;;
  slurm) launch_slurm ;;
  local) launch_local ;;
esac
