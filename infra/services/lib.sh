# shellcheck shell=bash
# Helpers shared by the service scripts, and the plumbing every service
# script runs through (service_main, at the end).  Sourced, never executed.

# shellcheck source=infra/services/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# Everything the scripts and the daemons they start create (state, keyrings,
# logs, configs) is private to the owner.
umask 077

log() { printf '[%s] %s\n' "${SERVICE_NAME:-services}" "$*" >&2; }

die() {
  log "ERROR: $*"
  exit 1
}

# Print the last lines of each given log file to stderr.
show_log_tail() {
  local f
  for f in "$@"; do
    if [[ -f "${f}" ]]; then
      printf -- '----- last 40 lines of %s -----\n' "${f}" >&2
      tail -n 40 "${f}" >&2 || true
    fi
  done
}

# die_with_logs MESSAGE LOG...: the tail of each LOG, then die MESSAGE.
die_with_logs() {
  local message="$1"
  shift
  show_log_tail "$@"
  die "${message}"
}

# pid_alive PIDFILE [COMM]: true when PIDFILE names a live process (whose
# command name is COMM, when given: guards against recycled pids).
# is_zombie PID: the process has exited and waits for its parent to reap it.  A
# daemon killed hard is re-parented to PID 1, which may take seconds to reap it.
is_zombie() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ "${stat##*) }" == Z* ]]
}

pid_alive() {
  local pidfile="$1" comm="${2:-}" pid
  [[ -s "${pidfile}" ]] || return 1
  pid="$(head -n 1 "${pidfile}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  ! is_zombie "${pid}" || return 1
  [[ -z "${comm}" ]] || [[ "$(cat "/proc/${pid}/comm" 2>/dev/null)" == "${comm}"* ]]
}

# curl_quote VALUE: VALUE escaped for a double-quoted string of a curl config
# (-K): credentials go to curl that way, never on its command line.
curl_quote() {
  local value="${1//\\/\\\\}"
  printf '%s' "${value//\"/\\\"}"
}

# Wall-clock timing with sub-second resolution.
timer_start() { printf '%s' "${EPOCHREALTIME}"; }
timer_elapsed() { awk -v a="$1" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }'; }

# port_listening PORT: true when something listens on SERVICES_HOST:PORT.
port_listening() {
  (exec 3<>"/dev/tcp/${SERVICES_HOST}/$1") 2>/dev/null
}

# stop_pidfile PIDFILE NAME [TIMEOUT] [COMM]: SIGTERM, wait, then SIGKILL.
# Signals the process group when the process leads one (setsid), so workers
# forked by the server go too.
stop_pidfile() {
  local pidfile="$1" name="$2" timeout="${3:-30}" comm="${4:-}" pid target
  if ! pid_alive "${pidfile}" "${comm}"; then
    rm -f "${pidfile}"
    return 0
  fi
  pid="$(head -n 1 "${pidfile}")"
  target="${pid}"
  if [[ "$(ps -o pgid= -p "${pid}" | tr -d ' ')" == "${pid}" ]]; then
    target="-${pid}"
  fi
  log "stopping ${name} (pid ${pid})"
  kill -TERM -- "${target}" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while kill -0 "${pid}" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "${name} did not exit after ${timeout}s, sending SIGKILL"
      kill -KILL -- "${target}" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "${pidfile}"
}

# tree_pids PID: PID and all its descendants, one per line.
tree_pids() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      for (p in parent) {
        q = p
        while (q != "" && q != 0 && q != 1) {
          if (q == root) { print p; break }
          q = parent[q]
        }
      }
    }'
}

# mem_tree PID: "rss N MiB, pss M MiB" summed over PID and its descendants.
# RSS counts shared pages (e.g. PostgreSQL shared buffers) once per process;
# PSS splits them, so the PSS sum is the real footprint.
mem_tree() {
  local pid rss=0 pss=0 kb
  for pid in $(tree_pids "$1"); do
    kb="$(awk '/^VmRSS:/ { print $2 }' "/proc/${pid}/status" 2>/dev/null || true)"
    rss=$((rss + ${kb:-0}))
    kb="$(awk '/^Pss:/ { print $2 }' "/proc/${pid}/smaps_rollup" 2>/dev/null || true)"
    pss=$((pss + ${kb:-0}))
  done
  printf 'rss %d MiB, pss %d MiB' $((rss / 1024)) $((pss / 1024))
}

# --- credentials and the state directory ---------------------------------------
# require_credentials VAR...: every VAR must be set (non-empty) in the
# environment; otherwise die naming the missing ones, unless
# IMAGE_FINETUNE_SERVICES_DEV=1, which exports the well-known local-development
# value of each missing one (env.sh) with a warning.  Values are never printed.
require_credentials() {
  local var missing=()
  for var in "$@"; do
    [[ -n "${!var:-}" ]] || missing+=("${var}")
  done
  if ((${#missing[@]} > 0)); then
    if [[ "${IMAGE_FINETUNE_SERVICES_DEV:-}" != 1 ]]; then
      die "missing credentials: ${missing[*]}.  Set them in the environment" \
        "(e.g. from a file only you can read: set -a; source ~/.config/image-finetune/services.env; set +a)," \
        "or set IMAGE_FINETUNE_SERVICES_DEV=1 to use the well-known local-development values" \
        "(never on a shared machine)"
    fi
    for var in "${missing[@]}"; do
      export "${var}=${SERVICES_DEV_CREDENTIALS[${var}]}"
    done
    log "WARNING: IMAGE_FINETUNE_SERVICES_DEV=1: using the well-known local-development" \
      "value of ${missing[*]}; anyone who can reach ${SERVICES_HOST} can use them"
  fi
  for var in "$@"; do
    if [[ "${var}" == MLFLOW_AUTH_ADMIN_PASSWORD ]] && ((${#MLFLOW_AUTH_ADMIN_PASSWORD} < 12)); then
      die "MLFLOW_AUTH_ADMIN_PASSWORD is too short (MLflow needs at least 12 characters)"
    fi
  done
}

# prepare_state_dir: creates SERVICES_STATE_DIR (parents 0755, itself 0700).
# When root runs the stack, PostgreSQL runs as POSTGRES_OS_USER and must be
# able to pass through it to its own (0700) subdirectory: then the directory
# is 0710 with that user's group (traverse only, no listing).
prepare_state_dir() {
  local dir="${SERVICES_STATE_DIR}"
  if [[ ! -d "${dir}" ]]; then
    (umask 022 && mkdir -p "$(dirname "${dir}")")
    mkdir -m 0700 "${dir}"
  fi
  [[ -O "${dir}" ]] || die "${dir} (SERVICES_STATE_DIR) belongs to another user"
  if ((EUID == 0)) && id -u "${POSTGRES_OS_USER}" >/dev/null 2>&1; then
    chgrp "$(id -g "${POSTGRES_OS_USER}")" "${dir}"
    chmod 0710 "${dir}"
  else
    chmod 0700 "${dir}"
  fi
}

# check_legacy_stack: dies when a stack started from the old default state
# directory (before authentication) still runs: its ports would clash and it
# has no authentication.
check_legacy_stack() {
  local old="${SERVICES_LEGACY_STATE_DIR}" f live=()
  [[ "${SERVICES_STATE_DIR}" != "${old}" && -d "${old}" ]] || return 0
  for f in "${old}/postgres/data/postmaster.pid" "${old}"/ceph/run/*.pid "${old}/mlflow/mlflow.pid"; do
    if pid_alive "${f}" 2>/dev/null; then
      live+=("${f#"${old}"/}")
    fi
  done
  ((${#live[@]} == 0)) ||
    die "a stack started from the old default state directory ${old} (without authentication)" \
      "is still running (${live[*]}); stop it first:" \
      "SERVICES_STATE_DIR=${old} bash ${SERVICES_DIR}/all.sh stop" \
      "(its data stays in ${old}; this stack keeps its state in ${SERVICES_STATE_DIR})"
}

# note_legacy_state_dir: says that the old default state directory, when it
# is still there, is no longer used.
note_legacy_state_dir() {
  local old="${SERVICES_LEGACY_STATE_DIR}"
  [[ "${SERVICES_STATE_DIR}" != "${old}" && -d "${old}" ]] || return 0
  log "note: ${old} (the old default state directory) is no longer used; state is now in" \
    "${SERVICES_STATE_DIR}.  Delete ${old} when you no longer need its data."
}

# --- service framework --------------------------------------------------------
# A service script sets SERVICE_NAME, sources this file, describes itself and
# ends with `service_main "$@"`:
#   svc_daemon NAME PIDFILE [COMM] [PORT_VAR] [STOP_TIMEOUT]
#                       one per process of the service, in start order
#   SVC_ADDR            where it answers (for messages)
#   SVC_LOG             its log file (or log directory): named when starting,
#                       tailed when it does not become ready
#   SVC_READY_TIMEOUT   seconds svc_is_ready gets after svc_launch
#   SVC_READY_NOTE      what the "ready" line adds (optional)
# and defines the hooks
#   svc_is_ready        true when the service answers                (required)
#   svc_launch          starts whatever of it is not running; the
#                       ports of the daemons not running are free     (required)
#   svc_preflight       checks before anything is started             (optional)
#   svc_provision       once ready: users, databases, buckets         (optional)
#   svc_stop            replaces the SIGTERM of each daemon, in
#                       reverse order; only called when one runs      (optional)
#   svc_abort           cleanup when a readiness wait fails           (optional)
# and may set
#   SVC_CREDENTIALS     the credential variables `start` needs (require_credentials)
SVC_COMMANDS=(start stop status restart)
SVC_CREDENTIALS=()
SVC_NAMES=()
declare -A SVC_PIDFILE=() SVC_COMM=() SVC_PORT_VAR=() SVC_STOP_TIMEOUT=()

svc_daemon() {
  SVC_NAMES+=("$1")
  SVC_PIDFILE[$1]="$2"
  SVC_COMM[$1]="${3:-}"
  SVC_PORT_VAR[$1]="${4:-}"
  SVC_STOP_TIMEOUT[$1]="${5:-30}"
}

daemon_alive() { pid_alive "${SVC_PIDFILE[$1]}" "${SVC_COMM[$1]}"; }
daemon_pid() { head -n 1 "${SVC_PIDFILE[$1]}"; }

# true when every daemon / at least one daemon of the service is alive
svc_running() {
  local name
  for name in "${SVC_NAMES[@]}"; do
    daemon_alive "${name}" || return 1
  done
}
svc_any_running() {
  local name
  for name in "${SVC_NAMES[@]}"; do
    daemon_alive "${name}" && return 0
  done
  return 1
}

run_hook() { if declare -F "$1" >/dev/null; then "$@"; fi; }

# daemon_start NAME LOG DIR CMD...: CMD in the background, in its own session
# (setsid: stop_pidfile then signals its workers too), in DIR, stdin from
# /dev/null, output appended to LOG; its pid goes to NAME's pid file.
daemon_start() {
  local name="$1" logfile="$2" dir="$3"
  shift 3
  printf '===== %s: %s start =====\n' "$(date -Is)" "${0##*/}" >>"${logfile}"
  (cd "${dir}" && exec setsid "$@") </dev/null >>"${logfile}" 2>&1 &
  echo "$!" >"${SVC_PIDFILE[${name}]}"
}

# wait_ready [-a] TIMEOUT WHAT CHECK [LOG...]: polls CHECK every 0.5 s.  Gives
# up after TIMEOUT seconds or, with -a, as soon as a daemon of the service has
# exited (its pid only: a process may not have exec'ed its COMM yet); then
# prints the tail of each LOG, runs svc_abort and dies.
wait_ready() {
  local alive=""
  if [[ "$1" == -a ]]; then
    alive=1
    shift
  fi
  local timeout="$1" what="$2" check="$3" name why=""
  shift 3
  local deadline=$((SECONDS + timeout))
  until "${check}"; do
    if ((SECONDS >= deadline)); then
      why="not ready within ${timeout}s"
    elif [[ -n "${alive}" ]]; then
      for name in "${SVC_NAMES[@]}"; do
        pid_alive "${SVC_PIDFILE[${name}]}" || why="${name} exited while starting"
      done
    fi
    [[ -z "${why}" ]] || break
    sleep 0.5
  done
  [[ -n "${why}" ]] || return 0
  show_log_tail "$@"
  run_hook svc_abort
  die "${what}: ${why}"
}

service_start() {
  require_credentials "${SVC_CREDENTIALS[@]}"
  check_legacy_stack
  run_hook svc_preflight
  if svc_running && svc_is_ready; then
    log "already running on ${SVC_ADDR}"
    return 0
  fi
  local name var
  for name in "${SVC_NAMES[@]}"; do
    var="${SVC_PORT_VAR[${name}]}"
    if [[ -n "${var}" ]] && ! daemon_alive "${name}" && port_listening "${!var}"; then
      die "port ${SERVICES_HOST}:${!var} is taken by another process (set ${var})"
    fi
  done
  SVC_T0="$(timer_start)"
  prepare_state_dir
  log "starting on ${SVC_ADDR} (log: ${SVC_LOG})"
  svc_launch
  wait_ready -a "${SVC_READY_TIMEOUT}" "${SERVICE_NAME} on ${SVC_ADDR}" svc_is_ready "${SVC_LOG}"
  run_hook svc_provision
  log "ready in $(timer_elapsed "${SVC_T0}")s on ${SVC_ADDR}${SVC_READY_NOTE:+: ${SVC_READY_NOTE}}"
}

service_stop() {
  local i name running=""
  svc_any_running && running=1
  if declare -F svc_stop >/dev/null; then
    [[ -z "${running}" ]] || svc_stop
  else
    # reverse order; stop_pidfile also drops pid files whose process is gone
    for ((i = ${#SVC_NAMES[@]} - 1; i >= 0; i--)); do
      name="${SVC_NAMES[i]}"
      stop_pidfile "${SVC_PIDFILE[${name}]}" "${name}" "${SVC_STOP_TIMEOUT[${name}]}" "${SVC_COMM[${name}]}"
    done
  fi
  if [[ -n "${running}" ]]; then
    log "stopped"
  else
    log "not running"
  fi
}

# exit 0 when every daemon runs and the service answers
service_status() {
  local rc=0 name pid
  if ((${#SVC_NAMES[@]} == 1)); then
    name="${SVC_NAMES[0]}"
    if daemon_alive "${name}" && svc_is_ready; then
      pid="$(daemon_pid "${name}")"
      log "running: pid ${pid}, ${SVC_ADDR}, $(mem_tree "${pid}")"
      return 0
    fi
    log "not running"
    return 1
  fi
  for name in "${SVC_NAMES[@]}"; do
    if daemon_alive "${name}"; then
      pid="$(daemon_pid "${name}")"
      log "${name}: running, pid ${pid}, $(mem_tree "${pid}")"
    else
      log "${name}: not running"
      rc=1
    fi
  done
  if svc_is_ready; then
    log "${SVC_ADDR}: answering"
  else
    log "${SVC_ADDR}: not answering"
    rc=1
  fi
  return "${rc}"
}

# The commands; a script may replace them (all.sh) or add to SVC_COMMANDS.
cmd_start() { service_start; }
cmd_stop() { service_stop; }
cmd_status() { service_status; }
cmd_restart() {
  cmd_stop
  cmd_start
}

service_main() {
  local cmd
  for cmd in "${SVC_COMMANDS[@]}"; do
    if [[ "${1:-}" == "${cmd}" ]]; then
      "cmd_${cmd}"
      return
    fi
  done
  local IFS='|'
  echo "usage: $0 {${SVC_COMMANDS[*]}}" >&2
  exit 2
}
