#!/usr/bin/env bash
# Builds the test infrastructure from the pinned Go modules under tools/ (kube-apiserver,
# kube-controller-manager, etcd, helm, kubeconform, jaeger, prometheus and promtool; for the
# node of up.sh --with-node kubelet, kube-scheduler, kube-proxy, kubectl and CoreDNS) into a
# cache directory outside the clone. The node's container runtime (containerd, runc, the CNI
# plugins, iptables, conntrack, busybox for a toolbox image) comes from Debian packages,
# installed here when missing.
#
# Idempotent and safe to run from many processes at once: builds happen under a lock, so
# one process builds and the others wait, then find everything in place.
#
# Progress goes to stderr; the bin directory is the last line of stdout, so
#   bin=$(deploy/testenv/install.sh)
# works in a script.
#
# Environment:
#   P2P_MPC_TESTENV_CACHE  cache root (default ${XDG_CACHE_HOME:-~/.cache}/p2p-mpc/testenv);
#                          binaries go to <root>/<key>/bin, key = hash of the tools' go.mod/go.sum
#   P2P_MPC_TESTENV_NICE   niceness of the Go builds (default 10), so a build shares the machine
#   P2P_MPC_TESTENV_NO_APT set to 1 to never run apt-get (the Debian packages above must
#                          then be installed already)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools=$here/tools
# Part of the cache key: bump it when the build commands below change so caches rebuild.
recipe=3

say() { printf 'testenv install: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

command -v go >/dev/null 2>&1 ||
    die "go not found on PATH: the test infrastructure is built from Go modules (Go >= 1.26 needed)"
command -v flock >/dev/null 2>&1 || die "flock not found on PATH (util-linux)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found on PATH (coreutils)"

# A caller's GOFLAGS (e.g. -mod=mod) must not change what gets built.
export GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0
unset GOOS GOARCH
niceness=${P2P_MPC_TESTENV_NICE:-10}

key=$(
    {
        echo "recipe=$recipe"
        go env GOVERSION GOOS GOARCH
        for f in "$tools"/*/go.mod "$tools"/*/go.sum "$tools"/*/*.go; do
            echo "== ${f#"$here"/}"
            cat "$f"
        done
    } | sha256sum | cut -c1-16
)
cache_root=${P2P_MPC_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/p2p-mpc/testenv}
dir=$cache_root/$key
bin=$dir/bin
logs=$dir/logs

go_binaries=(kube-apiserver kube-controller-manager etcd helm kubeconform jaeger
    prometheus promtool kubelet kube-scheduler kube-proxy kubectl coredns pause)

all_present() {
    local b
    for b in "${go_binaries[@]}"; do
        [ -x "$bin/$b" ] || return 1
    done
    [ -s "$bin/pause-image.tar" ] && [ -s "$bin/tools-image.tar" ] || return 1
    [ -x /bin/busybox ] || return 1
    for b in containerd containerd-shim-runc-v2 ctr runc iptables conntrack; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
    [ -x /usr/lib/cni/bridge ]
}

# Fast path without the lock: binaries only ever appear by an atomic rename.
if all_present; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
    say "another install is running (lock $cache_root/.lock); waiting for it"
    flock 9
fi
mkdir -p "$bin" "$logs"

# Version of a module as pinned in a tool's go.mod (reads go.mod only, no network).
modversion() {
    (cd "$tools/$1" && go list -m -f '{{.Version}}' "$2")
}

# build TOOL LDFLAGS NAME=PACKAGE... : builds each package of tools/TOOL into $bin/NAME,
# skipping names already there. Prints a heartbeat while the build runs.
build() {
    local tool=$1 ldflags=$2
    shift 2
    local spec name pkg missing=() pkgs=()
    for spec in "$@"; do
        name=${spec%%=*}
        [ -x "$bin/$name" ] || missing+=("$spec")
    done
    [ ${#missing[@]} -gt 0 ] || return 0

    local log=$logs/$tool.log tmp=$dir/tmp-$tool started=$SECONDS rc=0
    rm -rf "$tmp"
    mkdir -p "$tmp"
    for spec in "${missing[@]}"; do pkgs+=("${spec%%=*}"); done
    say "building ${pkgs[*]} (tools/$tool, log $log)"
    : >"$log"
    (
        cd "$tools/$tool"
        for spec in "${missing[@]}"; do
            name=${spec%%=*}
            pkg=${spec#*=}
            echo "+ go build -trimpath -ldflags '$ldflags' -o $tmp/$name $pkg"
            nice -n "$niceness" go build -trimpath -ldflags "$ldflags" -o "$tmp/$name" "$pkg" || exit
        done
    ) >>"$log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        # wait is interrupted neither by the heartbeat nor needed for it: poll every 5s.
        for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do
            sleep 5
            kill -0 "$pid" 2>/dev/null || break 2
        done
        say "  still building ${pkgs[*]} ($((SECONDS - started))s so far)"
    done
    wait "$pid" || rc=$?
    if [ "$rc" -ne 0 ]; then
        say "building ${pkgs[*]} (tools/$tool) FAILED with exit code $rc; last lines of $log:"
        tail -n 40 "$log" >&2
        rm -rf "$tmp"
        exit 1
    fi
    for spec in "${missing[@]}"; do
        name=${spec%%=*}
        mv -f "$tmp/$name" "$bin/$name"
    done
    rm -rf "$tmp"
    say "built ${pkgs[*]} in $((SECONDS - started))s"
}

# Kubernetes and helm report versions that their release builds stamp in with -X; without
# them the binaries say v0.0.0, and helm would assume Kubernetes 1.20 for chart checks.
k8s_version=$(modversion kubernetes k8s.io/kubernetes)
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
k8s_ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ld+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean"
done
build kubernetes "$k8s_ld" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
    kubectl=k8s.io/kubernetes/cmd/kubectl \
    kubelet=k8s.io/kubernetes/cmd/kubelet

build etcd "-s -w" etcd=go.etcd.io/etcd/server/v3

helm_version=$(modversion helm helm.sh/helm/v3)
helm_k8s_minor=$(modversion helm k8s.io/client-go | cut -d. -f2)
helm_ld="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$helm_k8s_minor"
done
build helm "$helm_ld" helm=helm.sh/helm/v3/cmd/helm

kubeconform_version=$(modversion kubeconform github.com/yannh/kubeconform)
build kubeconform "-s -w -X main.version=$kubeconform_version" kubeconform=github.com/yannh/kubeconform/cmd/kubeconform

build jaeger "-s -w" jaeger=github.com/jaegertracing/jaeger/cmd/jaeger

build coredns "-s -w" coredns=github.com/coredns/coredns

# Prometheus with its Kubernetes service discovery (Debian's package is built without it),
# and promtool of the same release. Without the `builtinassets` tag the web UI's assets are
# not embedded; the HTTP API the tests use does not need them.
prom_version=$(modversion prometheus github.com/prometheus/prometheus)
# Its module versions v0.3MM.P are the releases 3.MM.P.
prom_minor_patch=${prom_version#v0.}
prom_release="3.$((10#${prom_minor_patch%%.*} - 300)).${prom_minor_patch#*.}"
prom_ld="-s -w -X github.com/prometheus/common/version.Version=$prom_release -X github.com/prometheus/common/version.Branch=module"
build prometheus "$prom_ld" \
    prometheus=github.com/prometheus/prometheus/cmd/prometheus \
    promtool=github.com/prometheus/prometheus/cmd/promtool

# The node of up.sh --with-node runs containers with Debian's containerd and runc, networks
# them with the reference CNI plugins, and kube-proxy programs iptables (conntrack cleans up
# stale UDP entries). Each missing one is installed from Debian.
node_packages=()
command -v containerd >/dev/null 2>&1 || node_packages+=(containerd)
command -v runc >/dev/null 2>&1 || node_packages+=(runc)
command -v iptables >/dev/null 2>&1 || node_packages+=(iptables)
command -v conntrack >/dev/null 2>&1 || node_packages+=(conntrack)
[ -x /usr/lib/cni/bridge ] || node_packages+=(containernetworking-plugins)
# The test pods' toolbox (tools-image.tar below) is Debian's static busybox.
# It must be the static build: the image holds nothing else.
if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then node_packages+=(busybox-static); fi
if [ ${#node_packages[@]} -gt 0 ]; then
    if [ "${P2P_MPC_TESTENV_NO_APT:-0}" = 1 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing for the test node: ${node_packages[*]} (Debian packages); install them or run as root with apt-get"
    fi
    say "installing ${node_packages[*]} from Debian (log $logs/node-apt.log)"
    {
        apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${node_packages[@]}"
    } >"$logs/node-apt.log" 2>&1 || {
        say "installing ${node_packages[*]} FAILED; last lines of $logs/node-apt.log:"
        tail -n 40 "$logs/node-apt.log" >&2
        exit 1
    }
fi

# pack_image NAME REF CONFIG ROOTFS: packs the directory ROOTFS as a one-layer image REF
# into $bin/NAME-image.tar, a docker-archive that `ctr images import` takes (no image can be
# pulled here, and no image builder is needed). CONFIG is the image config's "config" object.
pack_image() {
    local name=$1 ref=$2 config=$3 rootfs=$4
    local img=$dir/tmp-$name-image diff_id config_id
    say "packing the $name image ($ref)"
    rm -rf "$img"
    mkdir -p "$img"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$img/layer.tar" .
    diff_id=$(sha256sum "$img/layer.tar" | cut -d' ' -f1)
    printf '{"architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"deploy/testenv/install.sh"}]}' \
        "$(go env GOARCH)" "$config" "$diff_id" >"$img/config.json"
    config_id=$(sha256sum "$img/config.json" | cut -d' ' -f1)
    mv "$img/config.json" "$img/$config_id.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$config_id" "$ref" >"$img/manifest.json"
    tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$img" -cf "$img/image.tar" manifest.json "$config_id.json" layer.tar
    mv -f "$img/image.tar" "$bin/$name-image.tar"
    rm -rf "$img"
}

# The pods' sandbox image: our static pause program alone.
build pause "-s -w" pause=.
if [ ! -s "$bin/pause-image.tar" ]; then
    rootfs=$dir/tmp-pause-rootfs
    rm -rf "$rootfs" && mkdir -p "$rootfs"
    cp "$bin/pause" "$rootfs/pause"
    pack_image pause localhost/pause:testenv '{"Entrypoint":["/pause"],"User":"65535:65535"}' "$rootfs"
    rm -rf "$rootfs"
fi
# A toolbox image for test pods that probe the node from inside (DNS lookups, connections
# to Services and pods): Debian's static busybox with a link per applet, nothing else.
if [ ! -s "$bin/tools-image.tar" ]; then
    rootfs=$dir/tmp-tools-rootfs
    rm -rf "$rootfs" && mkdir -p "$rootfs/bin" "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $("$rootfs/bin/busybox" --list); do
        [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
    done
    chmod 1777 "$rootfs/tmp"
    pack_image tools localhost/testenv-tools:testenv \
        '{"Entrypoint":["/bin/sh","-c"],"Env":["PATH=/bin"],"User":"65534:65534"}' "$rootfs"
    rm -rf "$rootfs"
fi


all_present || die "internal error: $bin is incomplete after the build"
say "ready: $bin"
echo "$bin"
