# shellcheck shell=bash
# The node of `up.sh --with-node`, sourced by up.sh once the control plane is ready (it uses
# up.sh's variables and helpers: $state, $bin, $pki, $kubeconfig, launch, wait_ready, ...).
# Starts containerd (runc, the CNI bridge network), kube-scheduler, the kubelet, kube-proxy
# and CoreDNS, and waits until the node is Ready. Everything it makes lives in $state or is
# named in $state/node.env, so down.sh can undo it.

node_dir=$state/node
containerd_dir=$state/containerd
containerd_sock=$containerd_dir/containerd.sock
mkdir -p "$node_dir" "$containerd_dir" "$state/cni/net.d" "$state/pod-logs"

# --- containerd ------------------------------------------------------------------------
# Two settings this sandbox needs (a normal host would not): root here may not lower a
# process's oom_score_adj, so the CRI must not ask for it (restrict_oom_score_adj), and the
# hugetlb controller sits on the cgroup2 mount of a cgroup v1 host, so runc must not use it.
# Network namespaces, runc's state and every image live under the state dir.
cat >"$containerd_dir/config.toml" <<EOF
version = 2
root = "$containerd_dir/root"
state = "$containerd_dir/state"

[grpc]
  address = "$containerd_sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$containerd_dir/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:testenv"
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$containerd_dir/runc"
        SystemdCgroup = false
EOF

# The pods' network: one bridge, addresses from the node's subnet, no masquerading (nothing
# is meant to leave; up.sh's iptables chain refuses it anyway).
cat >"$state/cni/net.d/10-testenv.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "p2p-mpc-testenv",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$state/cni/ipam",
        "ranges": [[{"subnet": "${node_ip%.*}.0/24", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF

say "starting containerd (socket $containerd_sock)"
launch containerd containerd --config "$containerd_dir/config.toml"
wait_ready containerd ctr --address "$containerd_sock" version
ctr_k8s() { ctr --address "$containerd_sock" --namespace k8s.io "$@"; }
# The sandbox image, and a busybox toolbox for test pods (localhost/testenv-tools:testenv).
for image in pause tools; do
    ctr_k8s images import "$bin/$image-image.tar" >"$node_dir/$image-import.log" 2>&1 || {
        log_tail "$node_dir/$image-import.log"
        die "importing the $image image into containerd failed"
    }
done

# --- kube-scheduler ----------------------------------------------------------------------
for _ in 1 2 3; do
    pick_port
    scheduler_port=$port
    say "starting kube-scheduler (health on https://127.0.0.1:$scheduler_port)"
    launch kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig="$kubeconfig" \
        --authentication-kubeconfig="$kubeconfig" \
        --authorization-kubeconfig="$kubeconfig" \
        --bind-address=127.0.0.1 \
        --secure-port="$scheduler_port" \
        --cert-dir="$state/scheduler-certs" \
        --leader-elect=false \
        --profiling=false \
        --v=1
    rc=0
    wait_ready kube-scheduler curl -fsSk --max-time 2 "https://127.0.0.1:$scheduler_port/healthz" || rc=$?
    [ "$rc" = 2 ] || break
    say "kube-scheduler: port taken, retrying with another port"
done
[ "$rc" = 0 ] || die "kube-scheduler could not get a free port in 3 attempts"

# --- kubelet -----------------------------------------------------------------------------
# Pods resolve through the cluster DNS only: the resolv.conf they inherit names no server,
# so no lookup is ever forwarded off this machine.
printf '# pods of the p2p-mpc test node: cluster DNS only\noptions ndots:5\n' >"$node_dir/resolv.conf"
# This sandbox: cgroup v1 (Kubernetes 1.35+ refuses it unless failCgroupV1 is false), swap
# may be on, and eviction thresholds low enough for a shared disk.
cat >"$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$containerd_sock
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$node_ip]
resolvConf: $node_dir/resolv.conf
podLogsDir: $state/pod-logs
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%, imagefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
protectKernelDefaults: false
makeIPTablesUtilChains: false
serializeImagePulls: false
maxPods: 60
# Mounted Secrets and ConfigMaps follow their objects within seconds (default 1 minute).
syncFrequency: 10s
EOF
for p in 10250 10248; do
    for ip in 127.0.0.1 "$node_ip"; do
        if (exec 3<>"/dev/tcp/$ip/$p") 2>/dev/null; then
            die "port $ip:$p is taken; the kubelet needs it (another kubelet on this machine?)"
        fi
    done
done
say "starting the kubelet (node $node_name at $node_ip:10250)"
launch kubelet "$bin/kubelet" \
    --config="$node_dir/kubelet.yaml" \
    --kubeconfig="$kubeconfig" \
    --root-dir="$state/kubelet" \
    --hostname-override="$node_name" \
    --node-ip="$node_ip" \
    --v=1
wait_ready kubelet curl -fsS --max-time 2 "http://127.0.0.1:10248/healthz"
node_ready() {
    [ "$("$bin/kubectl" --kubeconfig "$kubeconfig" get node "$node_name" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_ready kubelet node_ready

# --- kube-proxy ----------------------------------------------------------------------------
# iptables mode. It may not change conntrack sysctls here (zeros leave them as they are),
# and NodePorts answer on the node's address only.
pick_port
proxy_health_port=$port
pick_port
proxy_metrics_port=$port
cat >"$node_dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $kubeconfig
hostnameOverride: $node_name
clusterCIDR: $pod_range
healthzBindAddress: 127.0.0.1:$proxy_health_port
metricsBindAddress: 127.0.0.1:$proxy_metrics_port
nodePortAddresses: ["$node_ip/32"]
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
say "starting kube-proxy (iptables; health on http://127.0.0.1:$proxy_health_port)"
launch kube-proxy "$bin/kube-proxy" --config="$node_dir/kube-proxy.yaml" --v=1
wait_ready kube-proxy curl -fsS --max-time 2 "http://127.0.0.1:$proxy_health_port/healthz"

# --- cluster DNS -------------------------------------------------------------------------
# CoreDNS on the bridge address answers for cluster.local from the API and forwards nothing.
pick_port
dns_health_port=$port
pick_port
dns_ready_port=$port
cat >"$node_dir/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $node_ip
    errors
    health 127.0.0.1:$dns_health_port
    ready 127.0.0.1:$dns_ready_port
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig testenv
        pods insecure
    }
}
EOF
say "starting CoreDNS on $node_ip:53 (zone cluster.local)"
launch coredns "$bin/coredns" -conf "$node_dir/Corefile"
wait_ready coredns curl -fsS --max-time 2 "http://127.0.0.1:$dns_ready_port/ready"

# --- storage -------------------------------------------------------------------------------
# No dynamic provisioner runs here: a default StorageClass of local volumes and a pool of
# PersistentVolumes (directories under the state dir) take its place, the static kind of
# provisioning Kubernetes has for local disks. A claim of the default class binds to one
# when its pod is scheduled; the kubelet gives it the pod's fsGroup, as on any cluster.
pv_count=${P2P_MPC_TESTENV_VOLUMES:-16}
mkdir -p "$state/volumes"
{
    cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: testenv-local
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
    for i in $(seq -w 1 "$pv_count"); do
        mkdir -p "$state/volumes/pv-$i"
        cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: testenv-local-$i
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: testenv-local
  local: {path: "$state/volumes/pv-$i"}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$node_name]}
EOF
    done
} >"$node_dir/storage.yaml"
"$bin/kubectl" --kubeconfig "$kubeconfig" apply -f "$node_dir/storage.yaml" >"$node_dir/storage.log" 2>&1 || {
    log_tail "$node_dir/storage.log"
    die "creating the StorageClass and the local PersistentVolumes failed"
}
say "storage: default StorageClass testenv-local with $pv_count local PersistentVolumes of 10Gi"

cat >>"$state/endpoints.env" <<EOF
SCHEDULER_PORT=$scheduler_port
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
KUBE_PROXY_HEALTH_PORT=$proxy_health_port
KUBE_PROXY_METRICS_PORT=$proxy_metrics_port
DNS_PORT=53
DNS_HEALTH_PORT=$dns_health_port
DNS_READY_PORT=$dns_ready_port
EOF
say "node $node_name ready (pods on $node_bridge, cluster DNS $node_ip, containerd $containerd_sock)"
