#!/usr/bin/env bash
# wsgate benchmark suite (issue 3): wsgate, nginx, HAProxy, Caddy and direct
# in front of the same backend, in one run. See docs/benchmarks.md.
#
#   bench/run.sh [--quick] [--repeats N] [--only a,b] [--out DIR] [--rev REV] [--base REV] [other bench/suite flags]
#
# --rev REV measures wsgate as committed at REV (git archive, read-only)
# instead of the working tree. --base REV also builds REV as the target
# wsgate-base, for an A/B in one run: --base HEAD --only wsgate,wsgate-base,ws-128
#
# Full mode writes docs/benchmarks.md and docs/benchmarks.json; quick mode
# (≈1–2 minutes, figures not for publishing) writes to --out DIR, or to a new
# temp dir. Exit status: non-zero when a target fails to start or a workload
# errors; missed performance targets do not fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# --- arguments: ours are translated to the suite's flags, the rest pass through
args=()
rev=
base=
while (($#)); do
  case "$1" in
    --quick) args+=(-quick) ;;
    --repeats) args+=(-repeats "$2"); shift ;;
    --repeats=*) args+=(-repeats "${1#*=}") ;;
    --only) args+=(-only "$2"); shift ;;
    --only=*) args+=(-only "${1#*=}") ;;
    --out) args+=(-out "$2"); shift ;;
    --out=*) args+=(-out "${1#*=}") ;;
    --rev) rev=$2; shift ;;
    --rev=*) rev=${1#*=} ;;
    --base) base=$2; shift ;;
    --base=*) base=${1#*=} ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done

log() { echo "run.sh: $*" >&2; }

# --- packages: nginx haproxy caddy wrk, and taskset (util-linux)
missing=()
for p in nginx haproxy caddy wrk; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' maintainer scripts may try to start system daemons on
    # their default ports; policy-rc.d forbids that for this install.
    prc=/usr/sbin/policy-rc.d
    had_prc=0; [[ -e $prc ]] && had_prc=1
    if ((!had_prc)); then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; fi
    rc=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    if ((!had_prc)); then rm -f "$prc"; fi
    if ((rc)); then log "apt-get install ${missing[*]} failed ($rc)"; exit "$rc"; fi
  else
    log "missing packages ${missing[*]} and not root (or no apt-get): install them first"
    exit 1
  fi
fi

# --- no system daemon of nginx/haproxy/caddy: stop the services if they run
# (we never use their ports or configs, but they would steal CPU).
for svc in nginx haproxy caddy; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    log "stopping the system $svc service"
    systemctl stop "$svc" || true
  elif command -v service >/dev/null && service "$svc" status >/dev/null 2>&1; then
    log "stopping the system $svc service"
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done
# Report (never kill) other instances: they are not ours.
others=$(ps -eo pid=,comm= | awk '$2=="nginx"||$2=="haproxy"||$2=="caddy"{print $1"("$2")"}' | tr '\n' ' ')
[[ -z $others ]] || log "warning: other nginx/haproxy/caddy processes are running and may disturb the figures: $others"

# --- open files: 2×N idle connections through a proxy need ≥ 10,200 fds
hard=$(ulimit -Hn)
want=65536
if [[ $hard != unlimited && $hard -lt $want ]]; then
  log "note: hard open-file limit is $hard (< $want); using $hard"
  want=$hard
fi
ulimit -n "$want" 2>/dev/null || ulimit -n "$hard"
log "ulimit -n $(ulimit -n)"

# --- temp dir; everything we start is killed on exit
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wsgate-bench.XXXXXX")
pgids=$tmp/pgids
: >"$pgids"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n ${suite_pid:-} ]] && kill -0 "$suite_pid" 2>/dev/null; then
    kill -TERM "$suite_pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$suite_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$suite_pid" 2>/dev/null || true
  fi
  while read -r pg; do
    [[ -n $pg ]] && kill -KILL -- "-$pg" 2>/dev/null || true
  done <"$pgids"
  # Keep the configs and logs when something failed (or when asked to).
  if [[ ${KEEP_BENCH_TMP:-0} == 1 || $rc -ne 0 ]]; then
    rm -rf "$tmp/bin" "$tmp/src"
    log "kept configs and logs in $tmp"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build
log "building wsgate, backend, wsload and the suite into $tmp/bin"
mkdir -p "$tmp/bin"
# wsgate's version string names what is measured: a commit, or the working
# tree ("-dirty" when wsgate's own files differ from HEAD).
if [[ -n $rev ]]; then
  label="$(git rev-parse --short "$rev^{commit}") (committed tree)"
  mkdir -p "$tmp/src"
  git archive --format=tar "$rev" | tar -x -C "$tmp/src"
  (cd "$tmp/src" && go build -ldflags "-X 'main.version=$label'" -o "$tmp/bin/wsgate" ./cmd/wsgate)
else
  label=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [[ -n $(git status --porcelain -- . ':!bench' ':!docs/benchmarks.md' ':!docs/benchmarks.json' 2>/dev/null) ]]; then
    label="$label-dirty (working tree with uncommitted changes)"
  else
    label="$label (working tree)"
  fi
  go build -ldflags "-X 'main.version=$label'" -o "$tmp/bin/wsgate" ./cmd/wsgate
fi
if [[ -n $base ]]; then
  blabel="$(git rev-parse --short "$base^{commit}") (committed tree, base)"
  mkdir -p "$tmp/base"
  git archive --format=tar "$base" | tar -x -C "$tmp/base"
  (cd "$tmp/base" && go build -ldflags "-X 'main.version=$blabel'" -o "$tmp/bin/wsgate-base" ./cmd/wsgate)
fi
go build -o "$tmp/bin/backend" ./bench/backend
go build -o "$tmp/bin/wsload" ./bench/wsload
go build -o "$tmp/bin/suite" ./bench/suite

# --- run: the suite itself sits on the load CPU; it starts the proxies on CPU 1
log "running the suite"
set +e
taskset -c 0 "$tmp/bin/suite" -bin "$tmp/bin" -work "$tmp/work" -pgid-file "$pgids" "${args[@]}" &
suite_pid=$!
wait "$suite_pid"
rc=$?
set -e
exit "$rc"
