#!/usr/bin/env bash
# Start, stop or show the Docker engine that runs the nattrail lab.
#
# A Docker engine that already answers is used as it is. Otherwise this script starts Debian's
# containerd and dockerd itself (the machines this project runs on have no systemd as PID 1), with
# pid files and logs under $NATTRAIL_ENGINE_DIR, and stops them by pid.
set -euo pipefail

state=${NATTRAIL_ENGINE_DIR:-/var/lib/nattrail-engine}
run=$state/run
data_root=${NATTRAIL_DOCKER_ROOT:-$state/docker}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runtime_dst=/usr/local/libexec/nattrail/runc-nocap
sock=unix://$run/docker.sock

log() { printf 'engine: %s\n' "$*" >&2; }

answers() { timeout 5 docker version >/dev/null 2>&1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # seconds, command...
  local limit=$1; shift
  local i
  for ((i = 0; i < limit * 10; i++)); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  return 1
}

start() {
  if answers; then
    log "a Docker engine already answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null)); using it"
    return 0
  fi
  for tool in containerd dockerd runc; do
    command -v "$tool" >/dev/null || { log "$tool is missing: run 'make deps' (apt-get install docker.io)"; exit 1; }
  done
  mkdir -p "$run" "$data_root" "$(dirname "$runtime_dst")"
  # dockerd calls the runtime by absolute path, so it must not live in a checkout that may move.
  install -m 0755 "$here/runc-nocap" "$runtime_dst"

  if ! pid_alive "$run/containerd.pid"; then
    log "starting containerd (log: $state/containerd.log)"
    containerd --address "$run/containerd.sock" --root "$state/containerd" --state "$run/containerd" \
      >>"$state/containerd.log" 2>&1 &
    echo $! >"$run/containerd.pid"
    wait_for 20 test -S "$run/containerd.sock" || { log "containerd did not start; see $state/containerd.log"; exit 1; }
  fi
  if ! pid_alive "$run/dockerd.pid"; then
    log "starting dockerd (log: $state/dockerd.log)"
    # --iptables=false: Docker's isolation rules for internal networks drop traffic routed through
    # the router container. --ip-forward=false leaves the host's forwarding alone. The runtime
    # wrapper lets `privileged` containers start although this VM lacks CAP_SYS_RESOURCE.
    dockerd --host "unix:///var/run/docker.sock" --containerd "$run/containerd.sock" \
      --pidfile "$run/dockerd.pid.docker" --data-root "$data_root" --exec-root "$run/exec" \
      --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs \
      --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
      --add-runtime "nattrail=$runtime_dst" --default-runtime nattrail \
      >>"$state/dockerd.log" 2>&1 &
    echo $! >"$run/dockerd.pid"
  fi
  wait_for 60 answers || { log "dockerd did not answer within 60 s; see $state/dockerd.log"; exit 1; }
  log "Docker engine $(docker version --format '{{.Server.Version}}') is up"
}

stop_pid() { # name
  local pidfile=$run/$1.pid
  if pid_alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    log "stopping $1 (pid $pid)"
    kill "$pid"
    wait_for 30 bash -c "! kill -0 $pid 2>/dev/null" || { log "$1 did not stop; sending KILL"; kill -9 "$pid" || true; }
  fi
  rm -f "$pidfile"
}

stop() {
  stop_pid dockerd
  stop_pid containerd
}

status() {
  if answers; then
    echo "Docker engine answers: $(docker version --format '{{.Server.Version}}')"
    for p in containerd dockerd; do
      if pid_alive "$run/$p.pid"; then echo "$p: started by nattrail, pid $(cat "$run/$p.pid")"; fi
    done
  else
    echo "no Docker engine answers"; return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
