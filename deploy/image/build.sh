#!/usr/bin/env bash
# Builds the p2p-mpc image (both binaries, `p2p-mpc` the entrypoint) without pulling anything:
# the binaries are built here with cargo, the shared libraries they load are copied beside
# them (found with ldd), and deploy/Containerfile puts that on a `scratch` base. No shell, no
# package manager in the image; it runs as uid 65532.
#
# Usage: deploy/image/build.sh [options]
#   --tag REF            image reference (default localhost/p2p-mpc:<workspace version>)
#   --engine NAME        podman, buildah or docker (default: the first one found, in that order)
#   --base IMAGE         base image (default scratch; the libraries are copied in either way)
#   --bin-dir DIR        take p2p-mpc and p2p-mpc-operator from DIR instead of building them
#   --archive FILE       also write the image as a docker-archive tar (for `kind load
#                        image-archive`, `ctr -n k8s.io images import`, `docker load`)
#   --context-only DIR   only prepare the build context in DIR (for any other builder:
#                        `docker build -f deploy/Containerfile DIR`), build no image
#
# Progress goes to stderr; the last line of stdout is the image reference built (or the
# context directory with --context-only), so `ref=$(deploy/image/build.sh | tail -n 1)` works.
# CARGO_TARGET_DIR is honoured; the binaries are release builds with default features (never
# the test-faults feature).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
say() { printf 'image build: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
[ -n "$version" ] || die "no version in $root/Cargo.toml ([workspace.package] version)"
tag="localhost/p2p-mpc:$version"
engine=""
base=scratch
bin_dir=""
archive=""
context_only=""
while (($#)); do
    case "$1" in
    --tag | --engine | --base | --bin-dir | --archive | --context-only)
        [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
        case "$1" in
        --tag) tag=$2 ;;
        --engine) engine=$2 ;;
        --base) base=$2 ;;
        --bin-dir) bin_dir=$2 ;;
        --archive) archive=$2 ;;
        --context-only) context_only=$2 ;;
        esac
        shift 2
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

if [ -z "$context_only" ]; then
    if [ -z "$engine" ]; then
        for e in podman buildah docker; do
            if command -v "$e" >/dev/null 2>&1; then
                engine=$e
                break
            fi
        done
        [ -n "$engine" ] || die "none of podman, buildah, docker is on PATH (Debian: apt-get install podman), or use --context-only DIR with another builder"
    fi
    case "$engine" in
    podman | buildah | docker) command -v "$engine" >/dev/null 2>&1 || die "--engine $engine: not on PATH" ;;
    *) die "--engine must be podman, buildah or docker, not '$engine'" ;;
    esac
fi

binaries=(p2p-mpc p2p-mpc-operator)
if [ -z "$bin_dir" ]; then
    target=${CARGO_TARGET_DIR:-$root/target}
    say "building the release binaries (cargo build --release --locked; a cold build takes minutes)"
    (cd "$root" && cargo build --release --locked -p p2p-mpc-node -p p2p-mpc-operator --bin p2p-mpc --bin p2p-mpc-operator) >&2
    bin_dir=$target/release
fi
for b in "${binaries[@]}"; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing or not executable"
done

if [ -n "$context_only" ]; then
    ctx=$context_only
    mkdir -p "$ctx"
    [ -z "$(ls -A "$ctx")" ] || die "--context-only $ctx: the directory is not empty"
else
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/p2p-mpc-image.XXXXXX")
    trap 'rm -rf "$ctx"' EXIT
fi
rootfs=$ctx/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$ctx/home/p2p-mpc"
chmod 1777 "$rootfs/tmp"
chmod 0755 "$ctx/home/p2p-mpc"
for b in "${binaries[@]}"; do
    install -m 0755 "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
done

# The libraries each binary loads, by the absolute path the loader resolved (ldd prints
# `name => /path (addr)` and the loader itself as `/path (addr)`). A library ldd cannot
# find means the binary would not start in the image either.
libs=()
for b in "${binaries[@]}"; do
    out=$(ldd "$bin_dir/$b" 2>&1) || {
        # A static binary needs nothing.
        grep -q "not a dynamic executable" <<<"$out" && continue
        die "ldd $bin_dir/$b failed: $out"
    }
    if grep -q "not found" <<<"$out"; then
        die "$b needs libraries that are not installed here: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
    while read -r path; do
        libs+=("$path")
    done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out")
done
for lib in $(printf '%s\n' "${libs[@]}" | sort -u); do
    # cp --parents keeps the directory layout; -L copies the file a symlink names, under
    # the name the loader asks for.
    cp -L --parents "$lib" "$rootfs/"
done

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
p2p-mpc:x:65532:65532:p2p-mpc:/home/p2p-mpc:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
p2p-mpc:x:65532:
EOF

# Every binary must start from the copied libraries alone, before an image is made of them.
loader=$(printf '%s\n' "${libs[@]}" | grep -m1 '/ld-linux' || true)
if [ -n "$loader" ]; then
    libpath=$(printf '%s\n' "${libs[@]}" | xargs -r -n1 dirname | sort -u | sed "s|^|$rootfs|" | paste -sd:)
    for b in "${binaries[@]}"; do
        "$rootfs$loader" --library-path "$libpath" "$rootfs/usr/local/bin/$b" --version >/dev/null ||
            die "$b does not start with the libraries copied into the image"
    done
fi

if [ -n "$context_only" ]; then
    say "context ready in $ctx ($(du -sh "$ctx" | cut -f1)); build it with: docker build -f $root/deploy/Containerfile $ctx"
    echo "$ctx"
    exit 0
fi

say "building $tag with $engine from $base"
case "$engine" in
podman | docker) "$engine" build --build-arg "BASE=$base" -f "$root/deploy/Containerfile" -t "$tag" "$ctx" >&2 ;;
buildah) buildah bud --build-arg "BASE=$base" -f "$root/deploy/Containerfile" -t "$tag" "$ctx" >&2 ;;
esac

size=$("$engine" images --format '{{.Size}}' "$tag" 2>/dev/null | head -n 1 || true)
say "built $tag (${size:-size unknown})"
if [ -n "$archive" ]; then
    # A docker-archive is written whole, never added to.
    rm -f "$archive"
    case "$engine" in
    podman) podman save --format docker-archive -o "$archive" "$tag" >&2 ;;
    buildah) buildah push "$tag" "docker-archive:$archive:$tag" >&2 ;;
    docker) docker save -o "$archive" "$tag" >&2 ;;
    esac
    say "wrote $archive ($(du -h "$archive" | cut -f1))"
fi
echo "$tag"
