#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying and testing `hydra/launcher=slurm` (docs/cluster.md).
#
#   scripts/slurm_local_cluster.sh start    # install slurm-wlm + munge if missing, start munged/slurmctld/slurmd,
#                                           # wait until `sinfo` shows this node idle
#   scripts/slurm_local_cluster.sh status   # daemons and node state (exit 0: up, 3: down)
#   scripts/slurm_local_cluster.sh env      # the line to eval so that sbatch/sinfo find this cluster
#   scripts/slurm_local_cluster.sh stop     # stop the daemons this script started
#
# Everything lives in one private directory ($LATENTTRACER_SLURM_DIR, default /tmp/latenttracer-slurm-<uid>): the
# munge key and socket, slurm.conf, state, spool, logs and pid files. Nothing is written under /etc; clients find
# the cluster through SLURM_CONF=<dir>/slurm.conf (`eval "$(scripts/slurm_local_cluster.sh env)"`).
# Settings (environment): LATENTTRACER_SLURM_DIR, LATENTTRACER_SLURM_PARTITION (default: local),
# LATENTTRACER_SLURM_PORT (slurmctld's port, default 16817; slurmd uses the next one), LATENTTRACER_SLURM_TIMEOUT
# (seconds to wait for the node, default 60), LATENTTRACER_SLURM_INSTALL=0 (never run apt-get).
# Exit codes of `start`: 0 up; 1 a daemon did not start (see the logs it names); 2 the packages are missing and
# cannot be installed here (apt-get needs root; no apt-get; apt-get failed). Every wait is bounded.
set -euo pipefail

DIR="${LATENTTRACER_SLURM_DIR:-/tmp/latenttracer-slurm-$(id -u)}"
PARTITION="${LATENTTRACER_SLURM_PARTITION:-local}"
PORT="${LATENTTRACER_SLURM_PORT:-16817}"
WAIT="${LATENTTRACER_SLURM_TIMEOUT:-60}"
HOST="$(hostname -s)"
CONF="$DIR/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
export PATH="$PATH:/usr/sbin:/sbin"
export SLURM_CONF="$CONF"

say() { echo "slurm_local_cluster: $*"; }
fail() { echo "slurm_local_cluster: error: $1" >&2; exit "${2:-1}"; }

have_packages() { command -v munged && command -v slurmctld && command -v slurmd && command -v sinfo; } >/dev/null 2>&1

install_packages() {
  if have_packages; then
    return 0
  fi
  [ "${LATENTTRACER_SLURM_INSTALL:-1}" != 0 ] || fail "slurm-wlm/munge are not installed (LATENTTRACER_SLURM_INSTALL=0: not installing them)" 2
  command -v apt-get >/dev/null 2>&1 || fail "slurm-wlm/munge are not installed and there is no apt-get to install them" 2
  [ "$(id -u)" -eq 0 ] || fail "slurm-wlm/munge are not installed; as root: apt-get install slurm-wlm munge" 2
  mkdir -p "$DIR/log"
  say "installing slurm-wlm and munge (apt-get; log: $DIR/log/apt.log)"
  timeout 300 apt-get update >"$DIR/log/apt.log" 2>&1 || fail "apt-get update failed (no network?); see $DIR/log/apt.log" 2
  timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge \
    >>"$DIR/log/apt.log" 2>&1 || fail "apt-get install slurm-wlm munge failed; see $DIR/log/apt.log" 2
  have_packages || fail "slurm-wlm/munge installed, but munged/slurmctld/slurmd/sinfo are not on PATH" 2
}

# pid of a daemon from its pid file, only when that process is alive and is that daemon
daemon_pid() {
  local pidfile="$DIR/$1.pid" pid
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile" 2>/dev/null)" && [ -n "$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}

daemon_gone() { ! daemon_pid "$1" >/dev/null; }

node_state() { timeout 10 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n1; }

write_config() {
  local user cpus mem
  user="$(id -un)"
  # the node's CPUs as slurmd sees the hardware (sockets, cores, threads); else nproc, which must not read
  # OMP_NUM_THREADS (a test run sets it to 1)
  cpus="$(timeout 10 slurmd -C 2>/dev/null | head -n1 \
    | grep -oE 'CPUs=[0-9]+ Boards=[0-9]+ SocketsPerBoard=[0-9]+ CoresPerSocket=[0-9]+ ThreadsPerCore=[0-9]+')" \
    || cpus="CPUs=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
  mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # MB; a margin for the OS
  mkdir -p "$DIR"/{munge,state,spool,log}
  chmod 700 "$DIR" "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
  fi
  chmod 400 "$DIR/munge/munge.key"
  cat > "$CONF.tmp" <<EOF
# Written by scripts/slurm_local_cluster.sh: a one-node cluster for local tries and tests (overwritten on start).
ClusterName=latenttracer
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 $cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

wait_for() {  # wait_for <seconds> <what> <command...>: poll once a second
  local seconds="$1" what="$2" i
  shift 2
  for ((i = 0; i < seconds; i++)); do
    if "$@"; then return 0; fi
    sleep 1
  done
  return 1
}

node_idle() { [ "$(node_state)" = idle ]; }
node_up() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }
munge_up() { timeout 5 munge -S "$MUNGE_SOCKET" -n </dev/null >/dev/null 2>&1; }
ctld_up() { timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; }

cmd_start() {
  install_packages
  if daemon_pid munged >/dev/null && daemon_pid slurmctld >/dev/null && daemon_pid slurmd >/dev/null && node_up; then
    say "already running (node $HOST: $(node_state), partition $PARTITION)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  write_config
  if ! daemon_pid munged >/dev/null; then
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
      --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" </dev/null >>"$DIR/log/start.log" 2>&1 9>&- \
      || fail "munged did not start; see $DIR/log/start.log and $DIR/log/munged.log"
  fi
  wait_for 10 munged munge_up || fail "munged does not answer on $MUNGE_SOCKET; see $DIR/log/munged.log"
  if ! daemon_pid slurmctld >/dev/null; then
    # -c: start with an empty queue (a local cluster keeps no jobs across restarts)
    timeout 30 slurmctld -c </dev/null >>"$DIR/log/start.log" 2>&1 9>&- || fail "slurmctld did not start; see $DIR/log/start.log and $DIR/log/slurmctld.log"
  fi
  wait_for 20 slurmctld ctld_up || fail "slurmctld does not answer; see $DIR/log/start.log and $DIR/log/slurmctld.log"
  if ! daemon_pid slurmd >/dev/null; then
    timeout 30 slurmd -N "$HOST" </dev/null >>"$DIR/log/start.log" 2>&1 9>&- || fail "slurmd did not start; see $DIR/log/start.log and $DIR/log/slurmd.log"
  fi
  if ! wait_for "$WAIT" node node_idle; then
    # a node left down/drained by an earlier unclean stop comes back on request
    timeout 10 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    wait_for 10 node node_idle || fail "node $HOST is '$(node_state)', not idle, after ${WAIT}s; see $DIR/log/slurmd.log and $DIR/log/slurmctld.log"
  fi
  say "up: node $HOST idle in partition $PARTITION ($(timeout 10 sinfo -h -N -n "$HOST" -o %c) CPUs); config $CONF"
  echo "export SLURM_CONF=$CONF"
}

stop_daemon() {  # stop_daemon <name>: SIGTERM, then SIGKILL after 15 s
  local pid
  pid="$(daemon_pid "$1")" || return 0
  kill "$pid" 2>/dev/null || true
  wait_for 15 "$1" daemon_gone "$1" || kill -9 "$pid" 2>/dev/null || true
  say "stopped $1 ($pid)"
}

queue_empty() { [ -z "$(timeout 10 squeue -h -p "$PARTITION" -o %i 2>/dev/null)" ]; }

cmd_stop() {
  if daemon_pid slurmctld >/dev/null || daemon_pid slurmd >/dev/null; then
    if ! queue_empty; then  # jobs would outlive slurmd: cancel them first
      say "cancelling the jobs in partition $PARTITION"
      timeout 10 scancel -p "$PARTITION" || true
      wait_for 20 jobs queue_empty || say "jobs still listed after 20 s; stopping anyway"
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
  fi
  stop_daemon munged
  say "down (files kept in $DIR)"
}

cmd_status() {
  local name pid up=0
  for name in munged slurmctld slurmd; do
    if pid="$(daemon_pid "$name")"; then say "$name running ($pid)"; else say "$name not running"; up=3; fi
  done
  if [ "$up" = 0 ] && have_packages; then
    say "node $HOST: $(node_state || true)"
    timeout 10 sinfo || true
  fi
  [ "$up" = 0 ] && echo "export SLURM_CONF=$CONF"
  return "$up"
}

locked() {  # one start/stop at a time (two test sessions may start the cluster at once)
  mkdir -p "$(dirname "$DIR")"
  exec 9>"$DIR.lock"
  flock -w 120 9 || fail "another start/stop holds $DIR.lock for over 120 s"
  "$@"
}

case "${1:-}" in
  start) locked cmd_start ;;
  stop) locked cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 64 ;;
esac
