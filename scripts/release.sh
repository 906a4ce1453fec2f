#!/usr/bin/env bash
# Writes versioned release archives with checksums into dist/:
#
#   scripts/release.sh [--version V] [--out DIR] [PLATFORM...]
#
#   dist/wsgate-V-linux-amd64.tar.gz   (and linux-arm64, darwin-arm64)
#   dist/wsgate-V-windows-amd64.zip
#   dist/SHA256SUMS                    (sha256sum -c checks them)
#
# PLATFORM is GOOS/GOARCH; default linux/amd64 linux/arm64 darwin/arm64
# windows/amd64. V defaults to git describe (else dev). Each archive holds
# the static binary (CGO_ENABLED=0, -trimpath, version stamped), README.md,
# config.example.yaml, config.schema.json and deploy/ (systemd unit,
# Kubernetes recipes, the container config).
set -euo pipefail
cd "$(dirname "$0")/.."

version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
out=dist
platforms=()
while (($#)); do
  case $1 in
    --version) version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "release.sh: unknown flag '$1'" >&2; exit 2 ;;
    */*) platforms+=("$1"); shift ;;
    *) echo "release.sh: '$1' is not GOOS/GOARCH" >&2; exit 2 ;;
  esac
done
if ((${#platforms[@]} == 0)); then
  platforms=(linux/amd64 linux/arm64 darwin/arm64 windows/amd64)
fi
for tool in tar sha256sum; do
  command -v "$tool" >/dev/null || { echo "release.sh: $tool is needed" >&2; exit 1; }
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

archives=()
for p in "${platforms[@]}"; do
  goos=${p%/*} goarch=${p#*/}
  name=wsgate-$version-$goos-$goarch
  dir=$work/$name
  mkdir -p "$dir"
  exe=wsgate
  [[ $goos == windows ]] && exe=wsgate.exe
  echo "building $name"
  CGO_ENABLED=0 GOOS=$goos GOARCH=$goarch \
    go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=$version" -o "$dir/$exe" ./cmd/wsgate
  cp README.md config.example.yaml config.schema.json "$dir/"
  mkdir -p "$dir/deploy"
  # The recipes, not the Go module that tests them.
  (cd deploy && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -prune -o -type f -print |
    while read -r f; do mkdir -p "$dir/deploy/$(dirname "$f")"; cp "$f" "$dir/deploy/$f"; done)
  if [[ $goos == windows ]]; then
    command -v zip >/dev/null || { echo "release.sh: zip is needed for $p" >&2; exit 1; }
    (cd "$work" && rm -f "$out/$name.zip" && zip -qr -X "$out/$name.zip" "$name")
    archives+=("$name.zip")
  else
    # Reproducible: sorted names, fixed owner and times.
    tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner \
      --mtime='2000-01-01 00:00:00Z' -czf "$out/$name.tar.gz" "$name"
    archives+=("$name.tar.gz")
  fi
done
(cd "$out" && sha256sum "${archives[@]}" >SHA256SUMS)
echo "wrote ${archives[*]} and SHA256SUMS into $out"
