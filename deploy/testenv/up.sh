#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane on loopback: etcd, kube-apiserver and
# kube-controller-manager (so StatefulSets get Pods and owner references are garbage
# collected; without --with-node there is no scheduler and no kubelet, so Pods stay Pending).
#
#   eval "$(deploy/testenv/up.sh [--with-node] [STATE_DIR])"   # sets KUBECONFIG
#   kubectl get ns
#   deploy/testenv/down.sh STATE_DIR             # stops it and removes STATE_DIR
#
# --with-node adds one node where pods really run (root only, one per machine): containerd
# with runc, a CNI bridge network, kubelet, kube-scheduler, kube-proxy (iptables) and CoreDNS
# as cluster DNS (node-up.sh). Its network: bridge p2pmpc0 = 10.244.0.1/24 (the pods'
# subnet), Services in 10.0.0.0/24; the rest of 10.244.0.0/16 and the whole Service range
# are routed to a blackhole and pods may send nothing beyond the bridge, so nothing leaves
# the machine. The API server then listens on 10.244.0.1 (pods reach it through the
# `kubernetes` Service) and the kubeconfig names that address. README.md says why.
#
# STATE_DIR (argument, else $P2P_MPC_TESTENV_STATE, else a new directory under $TMPDIR)
# holds certificates, data, logs and pid files; several control planes can run at once,
# each with its own. All components listen on 127.0.0.1 on free ports picked at start.
#
# Everything for eval goes to stdout (the last line is `export KUBECONFIG=...`); progress
# and errors go to stderr. A component that does not become ready within the deadline
# ($P2P_MPC_TESTENV_TIMEOUT seconds each, default 60) stops the start, and the tail of its
# log is printed.
#
# Binaries come from install.sh (run here unless $P2P_MPC_TESTENV_BIN names a bin dir).
# With P2P_MPC_TESTENV_OWNER_PID=<pid>, the control plane is stopped when that process ends.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
timeout=${P2P_MPC_TESTENV_TIMEOUT:-60}

say() { printf 'testenv up: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

for c in openssl curl setsid base64; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found on PATH"
done

with_node=0
args=()
for a in "$@"; do
    case "$a" in
    --with-node) with_node=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*) die "unknown option '$a' (see --help)" ;;
    *) args+=("$a") ;;
    esac
done
[ ${#args[@]} -le 1 ] || die "at most one STATE_DIR argument, got: ${args[*]}"

state=${args[0]:-${P2P_MPC_TESTENV_STATE:-}}
if [ -z "$state" ]; then
    state=$(mktemp -d "${TMPDIR:-/tmp}/p2p-mpc-testenv.XXXXXX")
fi
mkdir -p "$state"
state=$(cd "$state" && pwd)
if ls "$state"/*.pid >/dev/null 2>&1; then
    die "$state already holds a control plane (pid files present); run down.sh $state first"
fi
# down.sh removes only directories carrying this marker.
touch "$state/.p2p-mpc-testenv"

if [ -n "${P2P_MPC_TESTENV_BIN:-}" ]; then
    bin=$P2P_MPC_TESTENV_BIN
else
    bin=$("$here/install.sh" | tail -n 1) || die "install.sh failed (see above)"
fi
for b in etcd kube-apiserver kube-controller-manager; do
    [ -x "$bin/$b" ] || die "$bin/$b missing or not executable"
done

# The node's fixed network (one node per machine, so fixed names and ranges).
node_bridge=p2pmpc0
node_ip=10.244.0.1
pod_range=10.244.0.0/16
service_range=10.0.0.0/24
kubernetes_service_ip=10.0.0.1
node_name=testenv-node
node_owner_file=/run/p2p-mpc-testenv-node
node_net_up=0
if [ "$with_node" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "--with-node needs root (containers, network, iptables)"
    for c in ip iptables sysctl flock; do
        command -v "$c" >/dev/null 2>&1 || die "$c not found on PATH (needed by --with-node)"
    done
    for b in kubelet kube-scheduler kube-proxy kubectl coredns pause-image.tar; do
        [ -e "$bin/$b" ] || die "$bin/$b missing: run install.sh (it builds the node's programs)"
    done
    for c in containerd containerd-shim-runc-v2 ctr runc conntrack; do
        command -v "$c" >/dev/null 2>&1 || die "$c not found on PATH: run install.sh (it installs Debian's packages)"
    done
    [ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge missing: run install.sh (Debian's containernetworking-plugins)"
    # One node per machine: the bridge, the kubelet's ports and the address ranges are fixed.
    exec 8>"$node_owner_file.lock"
    flock -n 8 || die "another up.sh --with-node is starting (lock $node_owner_file.lock)"
    if [ -s "$node_owner_file" ]; then
        other=$(cat "$node_owner_file")
        if [ -e "$other/.p2p-mpc-testenv" ]; then
            die "a test node already runs (state $other); stop it first: $here/down.sh $other"
        fi
        say "the test node of a removed state dir ($other) left its network behind; removing it"
        "$here/down.sh" --node-network-only >&2 || die "could not remove the old node's network"
    fi
    if ip link show "$node_bridge" >/dev/null 2>&1; then
        die "network interface $node_bridge exists but no test node owns it; remove it (ip link del $node_bridge)"
    fi
    for range in "$pod_range" "$service_range"; do
        clash=$(ip -4 route show to match "${range%/*}" | grep -v '^default' || true)
        [ -z "$clash" ] || die "the node's address range $range is already routed on this machine: $clash"
    done
    echo "$state" >"$node_owner_file"
    # Everything down.sh needs to undo the node, written before anything is made.
    cat >"$state/node.env" <<EOF
BIN=$bin
BRIDGE=$node_bridge
POD_RANGE=$pod_range
SERVICE_RANGE=$service_range
OLD_IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
OLD_BRIDGE_NF_CALL_IPTABLES=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || true)
EOF
    cp "$state/node.env" "$node_owner_file.env"
fi

# With an owner process (the Rust test helper passes its own pid), a watcher stops the
# control plane once the owner is gone, so a test process killed by Ctrl-C or a timeout,
# whose drop handlers never ran, leaves nothing behind, even when that happens while this
# script is still starting components. It ends by itself when the state directory goes
# away (down.sh was run).
if [ -n "${P2P_MPC_TESTENV_OWNER_PID:-}" ]; then
    owner=$P2P_MPC_TESTENV_OWNER_PID
    [[ "$owner" =~ ^[0-9]+$ ]] || die "P2P_MPC_TESTENV_OWNER_PID=$owner is not a pid"
    # shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
    setsid bash -c '
        while kill -0 "$1" 2>/dev/null && [ -e "$2/.p2p-mpc-testenv" ]; do sleep 1; done
        if [ -e "$2/.p2p-mpc-testenv" ]; then "$3" "$2"; fi
    ' owner-watch "$owner" "$state" "$here/down.sh" >/dev/null 2>&1 </dev/null &
fi

started_ok=0
cleanup_on_failure() {
    if [ "$started_ok" != 1 ]; then
        say "start failed; stopping what was started. Logs stay in $state (remove with down.sh $state)"
        P2P_MPC_TESTENV_KEEP=1 "$here/down.sh" "$state" >&2 || true
    fi
}
trap cleanup_on_failure EXIT
# Killed while starting: exit through the EXIT trap, which stops what was started.
trap 'exit 1' INT TERM HUP

# Free ports are picked below the kernel's ephemeral range, so they never collide with
# the source port of an outgoing connection or a port-0 bind of a test in the same run.
read -r eph_low _ </proc/sys/net/ipv4/ip_local_port_range
port_low=10000
port_high=$((eph_low - 1))
[ "$port_high" -gt 20000 ] || port_high=29999
used_ports=" "
# pick_port: sets $port to a free port not handed out before by this script.
pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((port_low + (RANDOM * 32768 + RANDOM) % (port_high - port_low)))
        case "$used_ports" in *" $p "*) continue ;; esac
        # A listener answers the connect; a free port refuses it at once.
        # Once the node's bridge exists, listeners on its address count too.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
            { [ "$node_net_up" != 1 ] || ! (exec 3<>"/dev/tcp/$node_ip/$p") 2>/dev/null; }; then
            used_ports+="$p "
            port=$p
            return 0
        fi
    done
    die "found no free port in $port_low-$port_high"
}

log_tail() {
    say "last lines of $1:"
    tail -n "${2:-40}" "$1" | sed 's/^/    /' >&2
}

# launch NAME ARGS... : starts a component detached from this shell, output to NAME.log.
launch() {
    local name=$1
    shift
    # Not a process group leader (no job control here), so setsid execs in place and $!
    # is the component's own pid.
    setsid "$@" >"$state/$name.log" 2>&1 </dev/null &
    echo $! >"$state/$name.pid"
}

# wait_ready NAME CHECK... : runs CHECK until it succeeds, the component exits or the
# deadline passes. Returns 2 when the component exited because its port was taken.
wait_ready() {
    local name=$1
    shift
    local pid
    pid=$(cat "$state/$name.pid")
    local deadline=$((SECONDS + timeout))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
            if grep -qi "address already in use" "$state/$name.log"; then
                rm -f "$state/$name.pid"
                return 2
            fi
            say "$name exited during start-up"
            log_tail "$state/$name.log"
            exit 1
        fi
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "$name not ready after ${timeout}s (check: $*)"
            log_tail "$state/$name.log"
            exit 1
        fi
        sleep 0.2
    done
}

# --- credentials -------------------------------------------------------------------------
pki=$state/pki
mkdir -p "$pki"
(
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.crt -days 3650 -subj "/CN=p2p-mpc-testenv-ca" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
    san="IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    if [ "$with_node" = 1 ]; then
        san+=",DNS:kubernetes.default.svc.cluster.local,IP:$node_ip,IP:$kubernetes_service_ip"
    fi
    printf '%s\n' "subjectAltName=$san" \
        "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out apiserver.crt -days 365 -extfile apiserver.ext
    if [ "$with_node" = 1 ]; then
        # The kubelet's serving certificate (the API server checks it against the CA) and
        # the client certificate the API server shows the kubelet (logs, port-forward).
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout kubelet.key -out kubelet.csr -subj "/CN=$node_name"
        printf '%s\n' "subjectAltName=IP:$node_ip,DNS:$node_name" "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >kubelet.ext
        openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out kubelet.crt -days 365 -extfile kubelet.ext
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout apiserver-kubelet-client.key -out apiserver-kubelet-client.csr \
            -subj "/O=system:masters/CN=kube-apiserver-kubelet-client"
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=clientAuth" >client.ext
        openssl x509 -req -in apiserver-kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out apiserver-kubelet-client.crt -days 365 -extfile client.ext
    fi
    # Service-account token signing key pair.
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key
    openssl pkey -in sa.key -pubout -out sa.pub
    token=$(openssl rand -hex 32)
    echo "$token,admin,admin,system:masters" >tokens.csv
    echo "$token" >admin.token
    chmod 600 ./*.key tokens.csv admin.token
) >"$state/pki.log" 2>&1 || {
    log_tail "$state/pki.log"
    die "generating certificates and keys with openssl failed"
}
token=$(cat "$pki/admin.token")

# --- etcd ----------------------------------------------------------------------------------
for _ in 1 2 3; do
    pick_port
    etcd_port=$port
    pick_port
    etcd_peer_port=$port
    say "starting etcd on 127.0.0.1:$etcd_port"
    launch etcd "$bin/etcd" \
        --name=testenv \
        --data-dir="$state/etcd" \
        --listen-client-urls="http://127.0.0.1:$etcd_port" \
        --advertise-client-urls="http://127.0.0.1:$etcd_port" \
        --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
        --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
        --initial-cluster="testenv=http://127.0.0.1:$etcd_peer_port" \
        --unsafe-no-fsync=true
    rc=0
    wait_ready etcd curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" || rc=$?
    [ "$rc" = 2 ] || break
    say "etcd: port taken, retrying with other ports"
    rm -rf "$state/etcd"
done
[ "$rc" = 0 ] || die "etcd could not get a free port in 3 attempts"

# --- kube-apiserver ----------------------------------------------------------------------
if [ "$with_node" = 1 ]; then
    # Pods reach the API server through the `kubernetes` Service, whose endpoint is the
    # advertised address: the bridge's, which only this machine can reach. The lease
    # reconciler keeps that endpoint. The kubelet is reached at its InternalIP, its serving
    # certificate checked against the CA, with a client certificate shown.
    api_ip=$node_ip
    api_node_args=(
        --endpoint-reconciler-type=lease
        --kubelet-preferred-address-types=InternalIP
        --kubelet-certificate-authority="$pki/ca.crt"
        --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt"
        --kubelet-client-key="$pki/apiserver-kubelet-client.key"
    )
    # The bridge is made before any pod, so the API server can bind its address.
    say "making the node's network: bridge $node_bridge $node_ip/24, blackhole routes for $pod_range and $service_range"
    ip link add "$node_bridge" type bridge
    ip addr add "$node_ip/24" dev "$node_bridge"
    ip link set "$node_bridge" up
    node_net_up=1
    ip route add blackhole "$pod_range"
    ip route add blackhole "$service_range"
    sysctl -qw net.ipv4.ip_forward=1
    # Bridged pod-to-pod packets pass iptables, so kube-proxy's Service rules see the replies.
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
    # Pods may reach each other and this machine, and nothing beyond it.
    iptables -N P2P-MPC-TESTENV
    iptables -A P2P-MPC-TESTENV -i "$node_bridge" -o "$node_bridge" -j ACCEPT
    iptables -A P2P-MPC-TESTENV -i "$node_bridge" -j REJECT --reject-with icmp-net-prohibited
    iptables -I FORWARD 1 -j P2P-MPC-TESTENV
else
    api_ip=127.0.0.1
    api_node_args=(--endpoint-reconciler-type=none)
fi
for _ in 1 2 3; do
    pick_port
    api_port=$port
    say "starting kube-apiserver on https://$api_ip:$api_port"
    launch kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$etcd_port" \
        --bind-address="$api_ip" \
        --advertise-address="$api_ip" \
        --secure-port="$api_port" \
        --cert-dir="$state/apiserver-certs" \
        --tls-cert-file="$pki/apiserver.crt" \
        --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --token-auth-file="$pki/tokens.csv" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range="$service_range" \
        --authorization-mode=RBAC \
        "${api_node_args[@]}" \
        --allow-privileged=true \
        --profiling=false \
        --v=1
    rc=0
    wait_ready kube-apiserver curl -fsS --max-time 2 --cacert "$pki/ca.crt" \
        -H "Authorization: Bearer $token" "https://$api_ip:$api_port/readyz" || rc=$?
    [ "$rc" = 2 ] || break
    say "kube-apiserver: port taken, retrying with another port"
done
[ "$rc" = 0 ] || die "kube-apiserver could not get a free port in 3 attempts"

kubeconfig=$state/kubeconfig
umask_old=$(umask)
umask 077
cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://$api_ip:$api_port
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: testenv
  context:
    cluster: testenv
    user: admin
    namespace: default
current-context: testenv
EOF
umask "$umask_old"

# --- kube-controller-manager ---------------------------------------------------------------
for _ in 1 2 3; do
    pick_port
    kcm_port=$port
    say "starting kube-controller-manager (health on https://127.0.0.1:$kcm_port)"
    launch kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig="$kubeconfig" \
        --authentication-kubeconfig="$kubeconfig" \
        --authorization-kubeconfig="$kubeconfig" \
        --bind-address=127.0.0.1 \
        --secure-port="$kcm_port" \
        --cert-dir="$state/kcm-certs" \
        --leader-elect=false \
        --service-account-private-key-file="$pki/sa.key" \
        --root-ca-file="$pki/ca.crt" \
        --profiling=false \
        --v=1
    rc=0
    wait_ready kube-controller-manager curl -fsSk --max-time 2 "https://127.0.0.1:$kcm_port/healthz" || rc=$?
    [ "$rc" = 2 ] || break
    say "kube-controller-manager: port taken, retrying with another port"
done
[ "$rc" = 0 ] || die "kube-controller-manager could not get a free port in 3 attempts"
# Pods can only be created once the service-account controller has made the namespace's
# default ServiceAccount: wait for it, so the first StatefulSet does not hit a back-off.
wait_ready kube-controller-manager curl -fsS --max-time 2 --cacert "$pki/ca.crt" \
    -H "Authorization: Bearer $token" \
    "https://$api_ip:$api_port/api/v1/namespaces/default/serviceaccounts/default"

cat >"$state/endpoints.env" <<EOF
ETCD_PORT=$etcd_port
ETCD_PEER_PORT=$etcd_peer_port
APISERVER_PORT=$api_port
CONTROLLER_MANAGER_PORT=$kcm_port
EOF

if [ "$with_node" = 1 ]; then
    # shellcheck source=deploy/testenv/node-up.sh
    source "$here/node-up.sh"
fi

started_ok=1
say "control plane ready (state in $state; stop it with $here/down.sh $state)"
echo "export P2P_MPC_TESTENV_STATE=$state"
echo "export KUBECONFIG=$kubeconfig"
