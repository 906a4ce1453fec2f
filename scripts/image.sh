#!/usr/bin/env bash
# Builds the wsgate container image without pulling anything: the binary
# with the local Go toolchain, the root file system in a temporary
# directory, then `docker build` with the Dockerfile (FROM scratch).
#
#   scripts/image.sh [-t TAG]...         # default tags wsgate:<version>, wsgate:latest
#   scripts/image.sh --rootfs DIR        # only lay out the root file system in DIR
#                                        # (Dockerfile.multistage's build stage)
#
# Environment: VERSION (default: git describe, else dev), GOARCH (default:
# the toolchain's), CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt,
# Debian's ca-certificates).
set -euo pipefail
cd "$(dirname "$0")/.."

rootfs_only=""
tags=()
while (($#)); do
  case $1 in
    --rootfs) rootfs_only=$2; shift 2 ;;
    -t|--tag) tags+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unexpected argument '$1'" >&2; exit 2 ;;
  esac
done

version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [[ ! -s $ca_bundle ]]; then
  echo "image.sh: no CA bundle at $ca_bundle (apt-get install ca-certificates, or set CA_BUNDLE)" >&2
  exit 1
fi

# rootfs DIR lays out the image's files in DIR.
rootfs() {
  local dir=$1
  # Explicit modes: the image's user (65532) must read and run them,
  # whatever the builder's umask.
  install -d -m 0755 "$dir" "$dir/usr" "$dir/usr/local" "$dir/usr/local/bin" "$dir/etc" \
    "$dir/etc/wsgate" "$dir/etc/ssl" "$dir/etc/ssl/certs"
  CGO_ENABLED=0 GOOS=linux GOARCH=${GOARCH:-$(go env GOARCH)} \
    go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=$version" \
    -o "$dir/usr/local/bin/wsgate" ./cmd/wsgate
  chmod 0755 "$dir/usr/local/bin/wsgate"
  install -m 0644 deploy/docker/wsgate.yaml "$dir/etc/wsgate/wsgate.yaml"
  install -m 0644 config.example.yaml "$dir/etc/wsgate/config.example.yaml"
  install -m 0644 config.schema.json "$dir/etc/wsgate/config.schema.json"
  # The example config names its schema beside it; so does the image's.
  sed -i 's|\$schema=../../config.schema.json|$schema=./config.schema.json|' "$dir/etc/wsgate/wsgate.yaml"
  install -m 0644 "$ca_bundle" "$dir/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$dir/etc/group"
  chmod 0644 "$dir/etc/passwd" "$dir/etc/group"
}

if [[ -n $rootfs_only ]]; then
  rootfs "$rootfs_only"
  exit 0
fi

if ((${#tags[@]} == 0)); then
  tags=("wsgate:$version" "wsgate:latest")
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
rootfs "$ctx/rootfs"
cp Dockerfile "$ctx/Dockerfile"
tag_args=()
for t in "${tags[@]}"; do tag_args+=(-t "$t"); done
docker build "${tag_args[@]}" \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
  "$ctx"
echo "built ${tags[*]} ($(docker image inspect -f '{{.Size}}' "${tags[0]}") bytes)"
