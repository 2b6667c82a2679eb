#!/usr/bin/env bash
# Loads an image into the containerd of the test node (up.sh --with-node), so pods can run
# it with `imagePullPolicy: Never` or `IfNotPresent` (nothing can be pulled here).
#
#   deploy/testenv/load-image.sh IMAGE [STATE_DIR]
#
# IMAGE is either an archive file (docker-archive or OCI tar, as `deploy/image/build.sh
# --archive FILE` writes) or an image reference in the local podman/buildah storage (as the
# last line of deploy/image/build.sh prints), which is saved with podman first.
# STATE_DIR is the node's state directory (default $P2P_MPC_TESTENV_STATE, which
# `eval "$(up.sh --with-node)"` sets). The last line of stdout is the image reference loaded.
set -euo pipefail

say() { printf 'testenv load-image: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

[ $# -ge 1 ] && [ $# -le 2 ] && [ -n "$1" ] || die "usage: load-image.sh IMAGE [STATE_DIR]"
image=$1
state=${2:-${P2P_MPC_TESTENV_STATE:-}}
[ -n "$state" ] || die "no state directory: pass STATE_DIR or set P2P_MPC_TESTENV_STATE (eval \"\$(up.sh --with-node)\")"
[ -e "$state/node.env" ] || die "$state is not a test node's state directory (started without --with-node?)"
sock=$state/containerd/containerd.sock
[ -S "$sock" ] || die "no containerd socket at $sock: is the node running?"
command -v ctr >/dev/null 2>&1 || die "ctr not found on PATH (Debian's containerd package)"

tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT
if [ -f "$image" ]; then
    archive=$image
else
    command -v podman >/dev/null 2>&1 ||
        die "'$image' is not a file, and podman (to save it from local storage) is not on PATH"
    podman image exists "$image" || die "no image '$image' in podman's local storage (build it with deploy/image/build.sh)"
    tmp=$(mktemp -d)
    archive=$tmp/image.tar
    say "saving $image from podman's storage"
    podman save --quiet --format docker-archive -o "$archive" "$image" ||
        die "podman save $image failed"
fi

say "importing $archive into containerd ($sock, namespace k8s.io)"
out=$(ctr --address "$sock" --namespace k8s.io images import "$archive" 2>&1) || {
    printf '%s\n' "$out" >&2
    die "ctr could not import $archive"
}
printf '%s\n' "$out" >&2
# ctr prints "unpacking REF (sha256:...)...done" for each image it imported.
ref=$(printf '%s\n' "$out" | sed -n 's/^unpacking \([^ ]*\) (sha256:.*$/\1/p' | tail -n 1)
[ -n "$ref" ] || die "ctr imported no named image from $archive (output above)"
ctr --address "$sock" --namespace k8s.io images ls -q | grep -xF "$ref" >/dev/null ||
    die "$ref is not listed by containerd after the import"
say "loaded $ref"
echo "$ref"
