#!/usr/bin/env bash
# Stops a control plane started by up.sh and removes its state directory.
#
#   deploy/testenv/down.sh STATE_DIR     (or $P2P_MPC_TESTENV_STATE)
#
# Each component gets SIGTERM, then SIGKILL if it is still there after 10 seconds
# (P2P_MPC_TESTENV_STOP_GRACE).
# Only processes whose command line names STATE_DIR are signalled, so a stale pid file
# never hits an unrelated process. With P2P_MPC_TESTENV_KEEP=1 the directory (logs) stays.
set -euo pipefail

say() { printf 'testenv down: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

state=${1:-${P2P_MPC_TESTENV_STATE:-}}
[ -n "$state" ] || die "usage: down.sh STATE_DIR (or set P2P_MPC_TESTENV_STATE)"
if [ ! -d "$state" ]; then
    say "$state does not exist; nothing to stop"
    exit 0
fi
[ -e "$state/.p2p-mpc-testenv" ] || die "$state was not made by up.sh (no marker file); not touching it"
state=$(cd "$state" && pwd)

# Running and not a zombie.
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}
ours() {
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$state/"
}

wait_gone() {
    local deadline=$((SECONDS + $1)) pid left
    while :; do
        left=()
        for pid in "${pids[@]}"; do
            alive "$pid" && left+=("$pid")
        done
        [ ${#left[@]} -gt 0 ] || return 0
        [ "$SECONDS" -lt "$deadline" ] || {
            pids=("${left[@]}")
            return 1
        }
        sleep 0.1
    done
}

# stop NAME... : SIGTERM to those components, SIGKILL to any still there after the grace time.
stop() {
    local name pid
    pids=()
    for name in "$@"; do
        [ -e "$state/$name.pid" ] || continue
        pid=$(cat "$state/$name.pid")
        if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && ours "$pid"; then
            pids+=("$pid")
            say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    if ! wait_gone "$grace"; then
        say "still running after ${grace}s, sending SIGKILL: ${pids[*]}"
        for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        wait_gone 5 || die "processes ${pids[*]} survived SIGKILL"
    fi
}

grace=${P2P_MPC_TESTENV_STOP_GRACE:-10}
# etcd last: the API server shuts down slowly once its storage is gone.
stop kube-controller-manager kube-apiserver
stop etcd
rm -f "$state"/*.pid

if [ "${P2P_MPC_TESTENV_KEEP:-0}" = 1 ]; then
    say "stopped; kept $state"
else
    rm -rf "$state"
    say "stopped and removed $state"
fi
