#!/usr/bin/env bash
# Builds an interop test peer into a cache outside the clone, keyed by its sources, so a run
# builds it once: `go` (the default), go-peer/, a go-libp2p peer with the library's defaults;
# `js`, js-peer/, a js-libp2p peer with the library's defaults (its npm packages, at the
# versions of package-lock.json, installed with `npm ci`). Safe to run from many processes
# at once (one builds under a lock, the others wait). Progress goes to stderr; the last line
# of stdout is the go-peer binary, or the js peer's script to run with node:
#   peer=$(deploy/interop/build.sh | tail -n 1)
#   script=$(deploy/interop/build.sh js | tail -n 1)
#
# Environment: P2P_MPC_INTEROP_CACHE, the cache root (default
# ${XDG_CACHE_HOME:-~/.cache}/p2p-mpc/interop).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${P2P_MPC_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/p2p-mpc/interop}

# once DONE CMD...: unless the file DONE exists, runs CMD under the cache's lock (checking
# DONE again once it holds the lock: another process may have built it meanwhile).
once() {
    local done=$1
    shift
    [ -e "$done" ] && return 0
    mkdir -p "$root"
    exec 9>"$root/.lock"
    flock 9
    [ -e "$done" ] || "$@"
}

if [ "${1:-go}" = js ]; then
    command -v node >/dev/null 2>&1 || { echo "interop build: node not found on PATH (Node.js >= 20 needed)" >&2; exit 1; }
    command -v npm >/dev/null 2>&1 || { echo "interop build: npm not found on PATH" >&2; exit 1; }
    major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 20 ] || { echo "interop build: Node.js $(node --version) is too old for js-libp2p 3 (20 or later needed)" >&2; exit 1; }
    key=$(cat "$here"/js-peer/package.json "$here"/js-peer/package-lock.json "$here"/js-peer/*.mjs <(node --version) | sha256sum | cut -c1-16)
    dir=$root/js-$key
    install_js() {
        echo "interop build: installing the js peer (js-libp2p) into $dir" >&2
        rm -rf "$dir" && mkdir -p "$dir"
        cp "$here"/js-peer/package.json "$here"/js-peer/package-lock.json "$here"/js-peer/*.mjs "$dir"/
        (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
        touch "$dir/.installed"
    }
    once "$dir/.installed" install_js
    echo "$dir/peer.mjs"
    exit 0
fi

command -v go >/dev/null 2>&1 || { echo "interop build: go not found on PATH (Go >= 1.26 needed)" >&2; exit 1; }
export GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0
key=$(cat "$here"/go-peer/go.mod "$here"/go-peer/go.sum "$here"/go-peer/*.go <(go env GOVERSION) | sha256sum | cut -c1-16)
bin=$root/$key/go-peer
build_go() {
    echo "interop build: building go-peer (go-libp2p, kad-dht, pubsub) into $root/$key" >&2
    mkdir -p "$root/$key"
    (cd "$here/go-peer" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
    mv -f "$bin.tmp" "$bin"
}
once "$bin" build_go
echo "$bin"
