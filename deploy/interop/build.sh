#!/usr/bin/env bash
# Builds the interop test peers (go-peer/: a go-libp2p peer with the library's defaults) into
# a cache outside the clone, keyed by their sources, so a run builds them once. Safe to run
# from many processes at once (one builds under a lock, the others wait). Progress goes to
# stderr; the last line of stdout is the go-peer binary:
#   peer=$(deploy/interop/build.sh | tail -n 1)
#
# Environment: P2P_MPC_INTEROP_CACHE, the cache root (default
# ${XDG_CACHE_HOME:-~/.cache}/p2p-mpc/interop).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v go >/dev/null 2>&1 || { echo "interop build: go not found on PATH (Go >= 1.26 needed)" >&2; exit 1; }
export GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0
key=$(cat "$here"/go-peer/go.mod "$here"/go-peer/go.sum "$here"/go-peer/*.go <(go env GOVERSION) | sha256sum | cut -c1-16)
root=${P2P_MPC_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/p2p-mpc/interop}
bin=$root/$key/go-peer
if [ ! -x "$bin" ]; then
    mkdir -p "$root"
    exec 9>"$root/.lock"
    flock 9
    if [ ! -x "$bin" ]; then
        echo "interop build: building go-peer (go-libp2p, kad-dht) into $root/$key" >&2
        mkdir -p "$root/$key"
        (cd "$here/go-peer" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
        mv -f "$bin.tmp" "$bin"
    fi
fi
echo "$bin"
