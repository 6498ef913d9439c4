#!/usr/bin/env bash
# The Docker engine the Containers run on under `wrangler dev`.
#
#   scripts/container-engine.sh start [--for PID]  # prints DOCKER_HOST=…
#   scripts/container-engine.sh release PID        # PID is done with it
#   scripts/container-engine.sh stop               # stops our dockerd now
#   scripts/container-engine.sh status
#
# `start` uses an engine that already answers (DOCKER_HOST, or the default
# socket: a developer's Docker Desktop) and starts nothing. Otherwise it
# installs Debian's docker.io when dockerd is missing and starts a dockerd
# of our own: data root, socket and pid file under CLOUDBOX_ENGINE_DIR
# (default .cloudbox/engine), the default bridge with an explicit gateway
# (workerd's container client needs the bridge's Gateway; TOOLCHAIN.md).
#
# Who uses our dockerd says so (`start --for PID`: make test, make dev, each
# test binary) and `release`s it when done; the last release stops it. Both
# take a lock, so a user that arrives as another leaves never finds it
# stopping. A user that died without releasing is not counted. An engine
# that is not ours is never stopped.
# Exit status 3: no engine can be had here (not root, no package, no start).
set -euo pipefail
cd "$(dirname "$0")/.."
# dockerd, runc and debootstrap live in sbin, which a user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
ENGINE_DIR=${CLOUDBOX_ENGINE_DIR:-$PWD/.cloudbox/engine}
SOCK="$ENGINE_DIR/docker.sock"
PIDFILE="$ENGINE_DIR/dockerd.pid"
# The bridge our own dockerd makes; containers reach the host at its gateway.
BRIDGE_CIDR=${CLOUDBOX_BRIDGE_CIDR:-172.17.0.1/16}
say() { echo "engine: $*" >&2; }

answers() { DOCKER_HOST="$1" timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

existing_engine() {
  if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then echo "$DOCKER_HOST"; return 0; fi
  for host in "unix://$SOCK" unix:///var/run/docker.sock; do
    if answers "$host"; then echo "$host"; return 0; fi
  done
  return 1
}

install_engine() {
  command -v dockerd >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    say "no dockerd, and installing Debian's docker.io needs root"
    return 3
  fi
  say "installing Debian's docker.io (about a minute)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get install -y -q docker.io >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q docker.io >/dev/null; }; }; then
    say "apt-get install docker.io failed"
    return 3
  fi
}

start_engine() {
  if host=$(existing_engine); then
    say "using the engine at $host"
    echo "DOCKER_HOST=$host"
    return 0
  fi
  install_engine || return 3
  if [ "$(id -u)" != 0 ]; then
    say "starting dockerd needs root"
    return 3
  fi
  mkdir -p "$ENGINE_DIR"
  # A dockerd of ours that died leaves its pid file and socket behind.
  rm -f "$SOCK" "$PIDFILE"
  say "starting dockerd (data root $ENGINE_DIR/data, log $ENGINE_DIR/dockerd.log)"
  # setsid: the engine outlives the shell that started it, until `stop`.
  setsid dockerd --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec" \
    --host "unix://$SOCK" --pidfile "$PIDFILE" --bip "$BRIDGE_CIDR" \
    --containerd-namespace cloudbox --containerd-plugins-namespace cloudbox-plugins \
    >"$ENGINE_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
  for _ in $(seq 150); do
    if answers "unix://$SOCK"; then
      say "dockerd is up (pid $(cat "$PIDFILE"))"
      echo "DOCKER_HOST=unix://$SOCK"
      return 0
    fi
    sleep 0.2
  done
  say "dockerd did not answer within 30 s; its log:"
  tail -n 20 "$ENGINE_DIR/dockerd.log" >&2 || true
  stop_engine
  return 3
}

stop_engine() {
  [ -f "$PIDFILE" ] || return 0
  pid=$(cat "$PIDFILE")
  # A pid file our dockerd left when it died may name another process now.
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]; then
    rm -f "$PIDFILE" "$SOCK"
    return 0
  fi
  # Containers first (wrangler removes its own; this catches the rest).
  if answers "unix://$SOCK"; then
    ids=$(DOCKER_HOST="unix://$SOCK" docker ps -q 2>/dev/null || true)
    [ -n "$ids" ] && DOCKER_HOST="unix://$SOCK" docker rm -f $ids >/dev/null 2>&1 || true
  fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE" "$SOCK"
  say "dockerd stopped"
}

# Runs "$@" holding the engine lock.
locked() {
  mkdir -p "$ENGINE_DIR/users"
  exec 9>"$ENGINE_DIR/lock"
  flock 9
  "$@"
}

# The registered users that are still alive.
live_users() {
  for f in "$ENGINE_DIR"/users/*; do
    [ -e "$f" ] || continue
    if kill -0 "$(basename "$f")" 2>/dev/null; then echo "$(basename "$f")"; else rm -f "$f"; fi
  done
}

start_for() {
  local user=${1:-}
  start_engine
  if [ -n "$user" ]; then touch "$ENGINE_DIR/users/$user"; fi
}

release_by() {
  rm -f "$ENGINE_DIR/users/$1"
  if [ -z "$(live_users)" ]; then stop_engine; fi
}

case "${1:-}" in
  start)
    user=""
    [ "${2:-}" = --for ] && user=${3:?start --for PID}
    locked start_for "$user"
    ;;
  release) locked release_by "${2:?release PID}" ;;
  stop) locked stop_engine ;;
  status) if host=$(existing_engine); then echo "DOCKER_HOST=$host"; else echo "no engine" >&2; exit 1; fi ;;
  *) echo "usage: $0 start [--for PID]|release PID|stop|status" >&2; exit 2 ;;
esac
