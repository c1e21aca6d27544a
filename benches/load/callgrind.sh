#!/usr/bin/env bash
# User-space instructions per request of one server, counted by callgrind:
# exact and repeatable, unlike wall-clock figures on a shared machine.
#
#   benches/load/callgrind.sh TARGET WORKLOAD [OUT]
#
# TARGET is `nginx` or the path of a pkce-proxy binary; WORKLOAD is one of
# other, authorize, token, flow. The upstream (load_upstream) runs natively;
# the target runs under valgrind with one worker thread. wrk warms it for
# 2 s, the counters are zeroed, wrk drives it for 5 s (-t1 -c8), and the
# dump's total is divided by the requests wrk saw. The dump is left in OUT
# (default target/load/callgrind) for callgrind_annotate.
# Valgrind hides SHA-NI, so SHA-256 runs in software here: the flow mix
# counts about 15,000 instructions a request more than it costs natively.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[[ $# -ge 2 ]] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 64; }
target=$1 workload=$2 out=${3:-$root/target/load/callgrind}
[[ -f "$here/$workload.lua" && "$workload" != common ]] || { echo "callgrind.sh: unknown workload $workload" >&2; exit 64; }
for tool in valgrind callgrind_control wrk; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: missing $tool (Debian: valgrind, wrk)" >&2; exit 69; }
done
if [[ "$target" == nginx ]]; then
  command -v nginx >/dev/null || { echo "callgrind.sh: missing nginx (Debian: nginx)" >&2; exit 69; }
else
  [[ -x "$target" ]] || { echo "callgrind.sh: $target is not an executable" >&2; exit 64; }
fi
(cd "$root" && cargo build --release --locked --quiet -p benches --bin load_upstream)

mkdir -p "$out"
# shellcheck source=ports.sh
source "$here/ports.sh"
own_processes pkce-callgrind
wait_port() {
  for _ in $(seq 1 150); do
    if ! port_free "$1"; then return; fi
    sleep 0.2
  done
  echo "callgrind.sh: nothing listens on $1 after 30 s" >&2; exit 1
}

cat "$here/common.lua" "$here/$workload.lua" >"$work/$workload.lua"
upstream_port=$(pick_port)
"$root/target/release/load_upstream" "127.0.0.1:$upstream_port" >"$work/upstream.log" 2>&1 &
started+=("$!")
wait_port "$upstream_port"

port=$(pick_port)
name="$(basename "$target")-$workload"
dump="$out/$name.callgrind"
rm -f "$dump" "$dump".*
if [[ "$target" == nginx ]]; then
  mkdir -p "$work/nginx"
  sed -e "s|@PREFIX@|$work/nginx|g" -e "s|@LISTEN@|127.0.0.1:$port|g" \
    -e "s|@UPSTREAM@|127.0.0.1:$upstream_port|g" "$here/nginx.conf.in" >"$work/nginx/nginx.conf"
  valgrind --tool=callgrind --callgrind-out-file="$dump" \
    nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
    -g 'daemon off; master_process off;' >"$work/target.log" 2>&1 &
else
  PKCE_PROXY_LOG=warn PKCE_PROXY_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$dump" \
    "$target" --upstream "http://127.0.0.1:$upstream_port" --listen "127.0.0.1:$port" \
    --admin-listen 127.0.0.1:0 --max-entries 50000000 >"$work/target.log" 2>&1 &
fi
pid=$!
started+=("$pid")
wait_port "$port"

timeout --signal=KILL 40 wrk -t1 -c8 -d2s -s "$work/$workload.lua" "http://127.0.0.1:$port" >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1
result=$(timeout --signal=KILL 60 wrk -t1 -c8 -d5s -s "$work/$workload.lua" "http://127.0.0.1:$port" | sed -n 's/^RESULT //p')
callgrind_control -d "$pid" >/dev/null 2>&1
sleep 1
requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$result")
bad=$(sed -n 's/.* bad=\([0-9]*\).*/\1/p' <<<"$result")
total=$(grep -h '^summary:' "$dump.1" | awk '{print $2}')
[[ -n "$requests" && "$requests" -gt 0 && -n "$total" ]] || { echo "callgrind.sh: no result ($result)" >&2; exit 1; }
[[ "$bad" == 0 ]] || { echo "callgrind.sh: $bad bad answers ($result)" >&2; exit 1; }
echo "$name: $(( total / requests )) instructions/request ($requests requests; dump $dump.1)"
