#!/usr/bin/env bash
# local_slurm.sh - a real single-machine Slurm cluster (Debian packages, no systemd) for tests and CI.
#
#   scripts/local_slurm.sh install   apt-get the packages (slurmctld slurmd slurm-client [munge]); no-op when present
#   scripts/local_slurm.sh start     install if needed, write slurm.conf, start the daemons, wait until nodes are idle;
#                                    prints "export SLURM_CONF=..." on stdout. A no-op while the cluster is up.
#   scripts/local_slurm.sh stop      cancel all jobs, stop the daemons we started (by PID file only)
#   scripts/local_slurm.sh status    exit 0 and print sinfo when the cluster answers, exit 3 otherwise
#
# Knobs (environment, all optional):
#   SLURM_ROOT=${TMPDIR:-/tmp}/huatuo-slurm   config, state, logs and PID files live here
#   SLURM_AUTH=none      none (auth/none: no munged; any uid is trusted - test clusters only) | munge
#   SLURM_NODES=1        1: one node "localhost"; N>1: fake nodes node1..nodeN, one slurmd each (names added to /etc/hosts)
#   SLURM_CRED_EXPIRE=10 seconds; also the least delay before a requeued job may start again (Slurm's default is 120)
#   SLURM_RESET=0        1: forget saved job/node state on start (job ids restart at 1)
#   SLURM_PURGE=0        1 with stop: also delete SLURM_ROOT, the /etc/slurm link and the /etc/hosts line
#
# Must run as root for install/start/stop. Measured facts behind each setting: docs/slurm.md.
set -euo pipefail

ROOT=${SLURM_ROOT:-${TMPDIR:-/tmp}/huatuo-slurm}
AUTH=${SLURM_AUTH:-none}
NODES=${SLURM_NODES:-1}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}
CONF=$ROOT/etc/slurm.conf
export SLURM_CONF=$CONF
HOSTS_TAG='# huatuo local_slurm fake nodes'

log() { echo "[local_slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "'$1' must run as root (it installs packages and starts daemons)"; }

# A PID is running only if it exists and is not a zombie: some sandboxes' PID 1 reaps late and kill -0 lies.
alive() {
  local s
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$s" != Z ] && [ "$s" != X ]
}
pid_from() { [ -s "$1" ] && cat "$1" || true; }

packages() {
  local p="slurmctld slurmd slurm-client"
  [ "$AUTH" = munge ] && p="$p munge"
  echo "$p"
}

cmd_install() {
  need_root install
  local missing="" p created_policy=0
  for p in $(packages); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: this script installs Slurm from Debian packages"
  log "installing:$missing"
  # Keep maintainer scripts from starting services on systemd hosts (munge, slurmd).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
  fi
  # Without --no-install-recommends it pulls 42 packages (hdf5, rrd plugins) instead of 8.
  local rc=0
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
    apt-get update -qq || rc=$?
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; } \
    || rc=$?
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "apt-get install$missing failed (rc $rc)"
}

node_names() {
  if [ "$NODES" -le 1 ]; then echo localhost; else seq -f 'node%g' 1 "$NODES" | tr '\n' ' '; fi
}
node_list() { if [ "$NODES" -le 1 ]; then echo localhost; else echo "node[1-$NODES]"; fi; }

cluster_up() {
  [ -r "$CONF" ] && alive "$(pid_from "$ROOT/run/slurmctld.pid")" || return 1
  scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
  local states
  states=$(sinfo -h -N -o '%T' 2>/dev/null) || return 1
  [ -n "$states" ] && [ -z "$(echo "$states" | grep -vE '^(idle|mixed|allocated|completing)$')" ]
}

write_conf() {
  local cpus sockets cores threads mem lines="" n i=0 authlines
  # This machine's hardware as slurmd sees it; a RealMemory above the truth makes the node INVAL, so take 90 %.
  read -r cpus sockets cores threads mem < <(slurmd -C | head -1 | tr ' ' '\n' | awk -F= '
    /^CPUs=/{c=$2} /^SocketsPerBoard=/{s=$2} /^CoresPerSocket=/{k=$2}
    /^ThreadsPerCore=/{t=$2} /^RealMemory=/{m=$2} END{print c,s,k,t,m}')
  mem=$(( mem * 9 / 10 ))
  if [ "$NODES" -le 1 ]; then
    lines="NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN"
  else
    for n in $(node_names); do
      i=$((i + 1))
      lines+="NodeName=$n NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$((mem / NODES)) State=UNKNOWN"$'\n'
    done
    # MASTER_ADDR is the first host name of the allocation: it must resolve.
    grep -q "$HOSTS_TAG" /etc/hosts || echo "127.0.0.1 $(node_names) $HOSTS_TAG" >> /etc/hosts
  fi
  if [ "$AUTH" = munge ]; then authlines=$'AuthType=auth/munge\nCredType=cred/munge'
  else authlines=$'AuthType=auth/none\nCredType=cred/none'; fi
  cat > "$CONF.new" <<EOF
# generated by scripts/local_slurm.sh - a throw-away test cluster
ClusterName=huatuo
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
$authlines
AuthInfo=cred_expire=$CRED_EXPIRE
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
ReturnToService=2
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.txt
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
$lines
PartitionName=debug Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$CONF.new" "$CONF"
  # slurmd loads a cgroup plugin even with linuxproc + task/none; autodetect picks cgroup/v2 on unified-only
  # hosts (Docker, CI runners) and fails there without systemd. Nothing uses it, so pin v1.
  echo "CgroupPlugin=cgroup/v1" > "$ROOT/etc/cgroup.conf"
  for n in $(node_names); do mkdir -p "$ROOT/spool/$n"; done
  # Clients and job steps find the config without SLURM_CONF; never replace a real admin's file.
  mkdir -p /etc/slurm
  if [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  else
    log "WARNING: /etc/slurm/slurm.conf is a real file, left alone; export SLURM_CONF=$CONF"
  fi
}

start_munge() {
  [ "$AUTH" = munge ] || return 0
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey -c -k /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  # munged refuses to run as root ("PRNG seed dir is insecure").
  runuser -u munge -- /usr/sbin/munged || runuser -u munge -- /usr/sbin/munged --force
  cat /run/munge/munged.pid > "$ROOT/run/munged.started-by-us"
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "munged is not working (see /var/log/munge/munged.log)"
}

cmd_start() {
  need_root start
  cmd_install
  if cluster_up; then log "already running"; echo "export SLURM_CONF=$CONF"; return 0; fi
  mkdir -p "$ROOT"/{etc,state,spool,log,run}
  [ "${SLURM_RESET:-0}" = 1 ] && rm -rf "${ROOT:?}"/state/* "${ROOT:?}"/spool/*
  write_conf
  start_munge
  if alive "$(pid_from "$ROOT/run/slurmctld.pid")"; then scontrol reconfigure || true; else slurmctld; fi
  for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
  # Always -N: a slurmd without it registers under the host name, and a second slurmd for a node kills the first.
  local n
  for n in $(node_names); do
    alive "$(pid_from "$ROOT/run/slurmd-$n.pid")" || slurmd -N "$n"
  done
  local states
  for _ in $(seq 1 300); do
    states=$(sinfo -h -N -o '%T' 2>/dev/null || true)
    if [ -n "$states" ] && [ -z "$(echo "$states" | grep -vE '^(idle|mixed|allocated)$')" ]; then
      log "cluster up: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ' ')"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    # Nodes left DOWN/DRAINED by an earlier run come back with a resume.
    if echo "$states" | grep -qE 'down|drain'; then scontrol update nodename="$(node_list)" state=resume 2>/dev/null || true; fi
    sleep 0.2
  done
  sinfo -N -l >&2 || true
  tail -20 "$ROOT/log/slurmctld.log" >&2 || true
  die "nodes did not become idle within 60 s"
}

stop_pid() {
  local pid=$1 t=${2:-10}
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((t * 10))); do alive "$pid" || return 0; sleep 0.1; done
  log "pid $pid did not exit after ${t}s, SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
  need_root stop
  if [ -r "$CONF" ]; then
    if scontrol ping 2>/dev/null | grep -q 'is UP'; then
      local jobs
      jobs=$(squeue -h -o %A 2>/dev/null | sort -u || true)
      if [ -n "$jobs" ]; then
        log "cancelling jobs: $(echo $jobs)"
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
      fi
      scontrol shutdown >/dev/null 2>&1 || true   # slurmctld and every registered slurmd
    fi
    local f
    for f in "$ROOT"/run/slurmd-*.pid "$ROOT/run/slurmctld.pid"; do
      [ -s "$f" ] || continue
      stop_pid "$(cat "$f")" 15
      rm -f "$f"
    done
    if [ -s "$ROOT/run/munged.started-by-us" ]; then
      local mp
      mp=$(cat "$ROOT/run/munged.started-by-us")
      [ "$(cat /run/munge/munged.pid 2>/dev/null)" = "$mp" ] && stop_pid "$mp" 10
      rm -f "$ROOT/run/munged.started-by-us"
    fi
  fi
  if [ "${SLURM_PURGE:-0}" = 1 ]; then
    [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$CONF" ] && rm -f /etc/slurm/slurm.conf
    if grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null; then   # /etc/hosts may be a bind mount: rewrite, no sed -i
      local tmp
      tmp=$(mktemp)
      grep -v "$HOSTS_TAG" /etc/hosts > "$tmp" || true
      cat "$tmp" > /etc/hosts
      rm -f "$tmp"
    fi
    rm -rf "${ROOT:?}"
  fi
  log "stopped"
}

cmd_status() {
  if command -v sinfo >/dev/null && cluster_up; then
    sinfo -N -o '%N %P %T %c %m'
    return 0
  fi
  echo "local slurm cluster not running (SLURM_CONF=$CONF)"
  return 3
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
