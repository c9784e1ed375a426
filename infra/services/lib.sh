# shellcheck shell=bash
# Helpers shared by the service scripts.  Sourced, never executed.

# shellcheck source=infra/services/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

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

# pid_alive PIDFILE [COMM]: true when PIDFILE names a live process (whose
# command name is COMM, when given: guards against recycled pids).
pid_alive() {
  local pidfile="$1" comm="${2:-}" pid
  [[ -s "${pidfile}" ]] || return 1
  pid="$(head -n 1 "${pidfile}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  [[ -z "${comm}" ]] || [[ "$(cat "/proc/${pid}/comm" 2>/dev/null)" == "${comm}"* ]]
}

# Wall-clock timing with sub-second resolution.
timer_start() { printf '%s' "${EPOCHREALTIME}"; }
timer_elapsed() { awk -v a="$1" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }'; }

# port_listening PORT: true when something listens on SERVICES_HOST:PORT.
port_listening() {
  (exec 3<>"/dev/tcp/${SERVICES_HOST}/$1") 2>/dev/null
}

# wait_until TIMEOUT DESCRIPTION CMD...: polls CMD every 0.5 s.
wait_until() {
  local timeout="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for ${what}"
      return 1
    fi
    sleep 0.5
  done
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

# rss_tree_mib PID: RSS in MiB of the process and all its descendants.
rss_tree_mib() {
  local root="$1"
  ps -e -o pid=,ppid=,rss= | awk -v root="${root}" '
    { parent[$1] = $2; rss[$1] = $3 }
    END {
      total = 0
      for (p in rss) {
        q = p
        while (q != "" && q != 0 && q != 1) {
          if (q == root) { total += rss[p]; break }
          q = parent[q]
        }
      }
      printf "%.0f\n", total / 1024
    }'
}

usage() {
  echo "usage: $0 {start|stop|status}" >&2
  exit 2
}
