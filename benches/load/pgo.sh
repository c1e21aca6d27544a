#!/usr/bin/env bash
# A profile-guided (PGO) release build of pkce-proxy. An instrumented build
# serves the load benchmark's four workloads through load_upstream, once on
# one CPU (Tokio's current-thread runtime) and once on every CPU (the
# multi-thread runtime); the merged profile then guides the final build.
# See benches/README.md.
#
#   benches/load/pgo.sh [--requests N] [--no-install]
#
# --requests N: how many responses each workload trains for, per runtime
# (default 60000). A count, not a time: the profile then weighs every
# workload and runtime the same whatever the machine's load.
# The binary is target/pgo/release/pkce-proxy; its path is the last line
# printed. Needs wrk, and llvm-profdata from rustup's llvm-tools component
# (added here unless --no-install). Stops only the processes it started.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

requests=60000
# The upper bound of one training run, far above what it takes.
bound=120
install=1
usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 64
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --requests) requests="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    -h|--help) usage ;;
    *) echo "pgo.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ "$requests" =~ ^[0-9]+$ ]] && (( requests >= 1000 && requests <= 10000000 )) \
  || { echo "pgo.sh: --requests must be a whole number from 1000 to 10000000" >&2; exit 64; }

for tool in cargo rustc wrk taskset getconf; do
  command -v "$tool" >/dev/null || { echo "pgo.sh: missing $tool (wrk: Debian wrk; taskset: util-linux)" >&2; exit 69; }
done

# llvm-profdata must read the profile format of rustc's own LLVM.
host=$(rustc -vV | sed -n 's/^host: //p')
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
  if [[ $install -eq 1 ]] && command -v rustup >/dev/null; then
    echo "== installing rustup's llvm-tools component (llvm-profdata)" >&2
    rustup component add llvm-tools >&2
  fi
fi
[[ -x "$profdata" ]] || { echo "pgo.sh: missing $profdata (rustup component add llvm-tools)" >&2; exit 69; }
profdata_major=$("$profdata" --version | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p')
[[ "$profdata_major" == "$llvm_major" ]] \
  || { echo "pgo.sh: llvm-profdata is LLVM $profdata_major, rustc is LLVM $llvm_major" >&2; exit 69; }

# shellcheck source=ports.sh
source "$here/ports.sh"
own_processes pkce-pgo
trap 'exit 130' INT TERM

echo "== building the instrumented pkce-proxy (target/pgo-generate)" >&2
# Build scripts and proc macros are instrumented too and write profiles
# while cargo runs them; those go to a directory of their own and are
# never used. The proxy's own profiles are named by LLVM_PROFILE_FILE below.
(cd "$root" && RUSTFLAGS="-Cprofile-generate=$root/target/pgo-generate/build-profiles" \
  cargo build --release --locked --quiet -p pkce-proxy --bin pkce-proxy \
  --target-dir "$root/target/pgo-generate")
(cd "$root" && cargo build --release --locked --quiet -p benches --bin load_upstream)
instrumented="$root/target/pgo-generate/release/pkce-proxy"

wait_port() {
  local port=$1 pid=$2
  for _ in $(seq 1 100); do
    if ! port_free "$port"; then return; fi
    kill -0 "$pid" 2>/dev/null || { echo "pgo.sh: a server exited at start" >&2; exit 1; }
    sleep 0.1
  done
  echo "pgo.sh: nothing listens on port $port after 10 s" >&2
  exit 1
}
# Each training run stops after `requests` responses, counted in the
# workload's own response handler where it has one. wrk's thread:stop()
# stops the load but not wrk, which waits out its -d; a file tells this
# script to interrupt it, on which wrk reports as usual.
for w in other authorize token flow; do
  cat "$here/common.lua" "$here/$w.lua" - >"$work/$w.lua" <<LUA

local workload_response = response
local responses = 0
function response(status, headers, body)
   if workload_response then
      workload_response(status, headers, body)
   end
   responses = responses + 1
   if responses == $requests then
      wrk.thread:stop()
      local marker = io.open([[$work/$w.done]], "w")
      if marker then
         marker:close()
      end
   end
end
LUA
done

# One training pass: the upstream and the instrumented proxy under `cpus`
# (a taskset list), every workload for `requests` responses, then SIGTERM,
# on which the proxy drains, exits and writes its profile.
train() {
  local cpus=$1 upstream_port proxy_port upstream_pid proxy_pid status served wrk_pid
  upstream_port=$(pick_port)
  taskset -c "$cpus" "$root/target/release/load_upstream" "127.0.0.1:$upstream_port" \
    >"$work/upstream.log" 2>&1 &
  upstream_pid=$!
  started+=("$upstream_pid")
  wait_port "$upstream_port" "$upstream_pid"
  proxy_port=$(pick_port)
  LLVM_PROFILE_FILE="$work/profiles/pkce-proxy-%p.profraw" PKCE_PROXY_LOG=warn \
    taskset -c "$cpus" "$instrumented" --upstream "http://127.0.0.1:$upstream_port" \
    --listen "127.0.0.1:$proxy_port" --admin-listen 127.0.0.1:0 \
    --max-entries 50000000 >"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  started+=("$proxy_pid")
  wait_port "$proxy_port" "$proxy_pid"
  for w in other authorize token flow; do
    echo "   CPUs $cpus, $w, $requests responses" >&2
    rm -f "$work/$w.done"
    timeout --signal=KILL $(( bound + 30 )) wrk -t1 -c64 -d "${bound}s" \
      -s "$work/$w.lua" "http://127.0.0.1:$proxy_port" >"$work/wrk.log" 2>&1 &
    wrk_pid=$!
    started+=("$wrk_pid")
    while kill -0 "$wrk_pid" 2>/dev/null && [[ ! -e "$work/$w.done" ]]; do
      sleep 0.05
    done
    # timeout passes the interrupt on to wrk.
    kill -INT "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" \
      || { echo "pgo.sh: wrk failed against the instrumented proxy:" >&2; cat "$work/wrk.log" >&2; exit 1; }
    grep -q ' bad=0 status_errors=0 socket_errors=0' "$work/wrk.log" \
      || { echo "pgo.sh: the instrumented proxy gave bad answers:" >&2; cat "$work/wrk.log" >&2; exit 1; }
    served=$(sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p' "$work/wrk.log")
    (( ${served:-0} >= requests )) \
      || { echo "pgo.sh: the instrumented proxy served ${served:-no} of $requests requests in ${bound}s" >&2; exit 1; }
  done
  kill -TERM "$proxy_pid"
  status=0
  wait "$proxy_pid" || status=$?
  kill -TERM "$upstream_pid" 2>/dev/null || true
  wait "$upstream_pid" 2>/dev/null || true
  (( status == 0 )) || { echo "pgo.sh: the instrumented proxy exited with $status; its log:" >&2; cat "$work/proxy.log" >&2; exit 1; }
}

echo "== training" >&2
mkdir -p "$work/profiles"
all_cpus="0-$(( $(getconf _NPROCESSORS_ONLN) - 1 ))"
train 0
train "$all_cpus"
ls "$work"/profiles/*.profraw >/dev/null 2>&1 \
  || { echo "pgo.sh: the instrumented proxy wrote no profile" >&2; exit 1; }

profile="$root/target/pgo-generate/pkce-proxy.profdata"
"$profdata" merge -o "$profile" "$work"/profiles/*.profraw

echo "== building the profile-guided pkce-proxy (target/pgo)" >&2
# Cargo does not see a new profile under the same flags, so the build
# starts clean.
rm -rf "$root/target/pgo"
(cd "$root" && RUSTFLAGS="-Cprofile-use=$profile" \
  cargo build --release --locked --quiet -p pkce-proxy --bin pkce-proxy \
  --target-dir "$root/target/pgo")
echo "$root/target/pgo/release/pkce-proxy"
