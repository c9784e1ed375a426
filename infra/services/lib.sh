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

usage() {
  echo "usage: $0 {start|stop|status}" >&2
  exit 2
}
