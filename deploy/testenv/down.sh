#!/usr/bin/env bash
# Stops a control plane started by up.sh and removes its state directory.
#
#   deploy/testenv/down.sh STATE_DIR     (or $P2P_MPC_TESTENV_STATE)
#   deploy/testenv/down.sh --node-network-only
#
# With a node (up.sh --with-node) it also removes every container, the mounts under
# STATE_DIR (pod volumes, network namespaces, container root filesystems), the pods'
# cgroups, kube-proxy's iptables rules and the node's network (bridge, blackhole routes,
# iptables chain, the two sysctls it set, restored). --node-network-only removes only the
# network a node left behind when its state directory is already gone.
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

node_owner_file=/run/p2p-mpc-testenv-node

# node_network_down ENV_FILE: removes the node network described there (each step is
# skipped when already gone, so a half-made node is undone too).
node_network_down() {
    local BIN="" BRIDGE="" POD_RANGE="" SERVICE_RANGE="" OLD_IP_FORWARD="" OLD_BRIDGE_NF_CALL_IPTABLES=""
    # shellcheck disable=SC1090 # written by up.sh: plain NAME=value lines
    source "$1"
    if [ -n "$BIN" ] && [ -x "$BIN/kube-proxy" ]; then
        "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || say "kube-proxy --cleanup reported errors (ignored)"
    fi
    # The kubelet's own (empty here) firewall chain, in both families.
    local ipt
    for ipt in iptables ip6tables; do
        command -v "$ipt" >/dev/null 2>&1 && "$ipt" -nL KUBE-FIREWALL >/dev/null 2>&1 || continue
        while "$ipt" -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
        while "$ipt" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
        "$ipt" -F KUBE-FIREWALL && "$ipt" -X KUBE-FIREWALL || say "could not remove $ipt chain KUBE-FIREWALL"
    done
    if iptables -C FORWARD -j P2P-MPC-TESTENV 2>/dev/null; then
        iptables -D FORWARD -j P2P-MPC-TESTENV
    fi
    if iptables -nL P2P-MPC-TESTENV >/dev/null 2>&1; then
        iptables -F P2P-MPC-TESTENV
        iptables -X P2P-MPC-TESTENV
    fi
    if [ -n "$BRIDGE" ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE"
    fi
    local range
    for range in $POD_RANGE $SERVICE_RANGE; do
        if [ -n "$(ip route show type blackhole to exact "$range")" ]; then
            ip route del blackhole "$range"
        fi
    done
    [ -z "$OLD_IP_FORWARD" ] || sysctl -qw "net.ipv4.ip_forward=$OLD_IP_FORWARD"
    [ -z "$OLD_BRIDGE_NF_CALL_IPTABLES" ] ||
        sysctl -qw "net.bridge.bridge-nf-call-iptables=$OLD_BRIDGE_NF_CALL_IPTABLES"
    rm -f "$node_owner_file" "$node_owner_file.env"
    say "removed the test node's network"
}

if [ "${1:-}" = --node-network-only ]; then
    [ -e "$node_owner_file.env" ] || {
        say "no test node network recorded ($node_owner_file.env); nothing to remove"
        exit 0
    }
    node_network_down "$node_owner_file.env"
    exit 0
fi

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
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -F -- "$state/" >/dev/null
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

# The node first: no kubelet may restart what is removed next.
if [ -e "$state/node.env" ]; then
    stop kubelet kube-proxy kube-scheduler coredns
    # Every container and sandbox, by runc directly (the kubelet is gone): killed, removed.
    runc_root=$state/containerd/runc/k8s.io
    if [ -d "$runc_root" ]; then
        for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
            runc --root "$runc_root" delete --force "$id" >/dev/null 2>&1 || say "runc could not remove container $id"
        done
    fi
    stop containerd
    # What containerd started (its shims) names the state dir on its command line.
    pids=()
    for cmdline in /proc/[0-9]*/cmdline; do
        pid=${cmdline#/proc/}
        pid=${pid%/cmdline}
        [ "$pid" != $$ ] && alive "$pid" && ours "$pid" && pids+=("$pid")
    done
    if [ ${#pids[@]} -gt 0 ]; then
        say "stopping what containerd left: ${pids[*]}"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait_gone 5 || say "still there: ${pids[*]}"
    fi
    # Pod volumes, network namespaces and root filesystems: deepest mount first.
    awk -v dir="$state/" 'index($5, dir) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r mnt; do
            umount -l "$mnt" 2>/dev/null || say "could not unmount $mnt"
        done
    # The CNI results cached for the pods' sandboxes (libcni keeps them outside the state
    # dir; a sandbox removed without the CRI leaves them behind).
    for result in /var/lib/cni/results/p2p-mpc-testenv-*-eth0; do
        [ -e "$result" ] || continue
        id=${result#/var/lib/cni/results/p2p-mpc-testenv-}
        id=${id%-eth0}
        rm -f "$result" "/var/lib/cni/results/cni-loopback-$id-lo"
    done
    # The pods' cgroups (cgroupfs driver: /kubepods in each hierarchy), leaves first.
    for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        [ -d "$hierarchy/kubepods" ] || continue
        find "$hierarchy/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null ||
            say "could not remove every cgroup under $hierarchy/kubepods"
    done
    node_network_down "$state/node.env"
fi

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
