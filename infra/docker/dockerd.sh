#!/usr/bin/env bash
# The Docker daemon for the containers tier and `run-local --runner docker` on a machine
# without one running (CI): Debian's docker.io, started and stopped by its PID.
#   dockerd.sh install   docker.io and debootstrap (the local base image), when missing
#   dockerd.sh start     start dockerd unless a daemon already answers (that one is not ours)
#   dockerd.sh stop      stop the dockerd this script started (SIGTERM, then SIGKILL)
#   dockerd.sh status    exit 0 when a daemon answers
set -euo pipefail
state=${DOCKERD_STATE_DIR:-/run/image-finetune-dockerd}
pidfile="$state/dockerd.pid"
logfile="$state/dockerd.log"

answers() { docker info >/dev/null 2>&1; }
ours() { [[ -s "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

cmd_install() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  ((${#missing[@]})) || return 0
  echo "dockerd.sh: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" iptables >/dev/null
}

cmd_start() {
  if answers; then echo "dockerd: a daemon already answers"; return 0; fi
  mkdir -p "$state"
  setsid dockerd >"$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  local deadline=$((SECONDS + 60))
  until answers; do
    if ! ours || ((SECONDS >= deadline)); then
      tail -n 30 "$logfile" >&2; echo "dockerd.sh: dockerd did not start" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "dockerd: started (pid $(cat "$pidfile"), $(docker info --format '{{.Driver}}'))"
}

cmd_stop() {
  ours || { rm -f "$pidfile"; return 0; }
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || { kill -KILL "$pid"; break; }
    sleep 0.2
  done
  rm -f "$pidfile"
  echo "dockerd: stopped (pid $pid)"
}

cmd_status() { answers; }

case "${1:-}" in
  install | start | stop | status) "cmd_$1" ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
