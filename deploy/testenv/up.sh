#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane on loopback: etcd, kube-apiserver and
# kube-controller-manager (so StatefulSets get Pods and owner references are garbage
# collected; there is no scheduler and no kubelet, so Pods stay Pending).
#
#   eval "$(deploy/testenv/up.sh [STATE_DIR])"   # sets KUBECONFIG
#   kubectl get ns
#   deploy/testenv/down.sh STATE_DIR             # stops it and removes STATE_DIR
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

state=${1:-${P2P_MPC_TESTENV_STATE:-}}
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
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
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
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc" \
        "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out apiserver.crt -days 365 -extfile apiserver.ext
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
for _ in 1 2 3; do
    pick_port
    api_port=$port
    say "starting kube-apiserver on https://127.0.0.1:$api_port"
    launch kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$etcd_port" \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$api_port" \
        --cert-dir="$state/apiserver-certs" \
        --tls-cert-file="$pki/apiserver.crt" \
        --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --token-auth-file="$pki/tokens.csv" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --authorization-mode=RBAC \
        --endpoint-reconciler-type=none \
        --allow-privileged=true \
        --profiling=false \
        --v=1
    rc=0
    wait_ready kube-apiserver curl -fsS --max-time 2 --cacert "$pki/ca.crt" \
        -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" || rc=$?
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
    server: https://127.0.0.1:$api_port
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
    "https://127.0.0.1:$api_port/api/v1/namespaces/default/serviceaccounts/default"

cat >"$state/endpoints.env" <<EOF
ETCD_PORT=$etcd_port
ETCD_PEER_PORT=$etcd_peer_port
APISERVER_PORT=$api_port
CONTROLLER_MANAGER_PORT=$kcm_port
EOF

started_ok=1
say "control plane ready (state in $state; stop it with $here/down.sh $state)"
echo "export P2P_MPC_TESTENV_STATE=$state"
echo "export KUBECONFIG=$kubeconfig"
