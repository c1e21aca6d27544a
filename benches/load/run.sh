#!/usr/bin/env bash
# The load benchmark: the same upstream reached directly, through nginx and
# through pkce-proxy, under four wrk workloads, in interleaved rounds.
# See benches/README.md. Every run is bounded by wrk's -d (and a timeout
# around it); the script stops only the processes it started.
#
#   benches/load/run.sh [--rounds N] [--duration SECONDS] [--connections N]
#                       [--warmup SECONDS] [--workloads LIST] [--no-install]
#                       [--out DIR] [--compare BIN] [--pgo] [--smoke]
# --compare BIN adds a fourth target, pkce-proxy-before: another pkce-proxy
# binary (an earlier build), measured in the same rounds.
# --pgo measures the profile-guided build of load/pgo.sh as pkce-proxy.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

rounds=5
duration=10
connections=64
warmup=2
workloads="other authorize token flow"
targets=(direct nginx pkce-proxy)
install=1
out=""
compare=""
pgo=0

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 64
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --workloads) workloads="${2//,/ }"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --compare) compare="$2"; shift 2 ;;
    --pgo) pgo=1; shift ;;
    --smoke) rounds=1; duration=2; warmup=0; shift ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown argument $1" >&2; usage ;;
  esac
done
for n in "$rounds" "$duration" "$connections" "$warmup"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "run.sh: $n is not a whole number" >&2; exit 64; }
done
(( rounds >= 1 && duration >= 1 && connections >= 1 )) || { echo "run.sh: rounds, duration and connections must be at least 1" >&2; exit 64; }
if [[ -n "$compare" ]]; then
  [[ -x "$compare" ]] || { echo "run.sh: --compare $compare is not an executable" >&2; exit 64; }
  targets+=(pkce-proxy-before)
fi
for w in $workloads; do
  [[ -f "$here/$w.lua" && "$w" != common ]] || { echo "run.sh: unknown workload $w" >&2; exit 64; }
done

# --- what the benchmark needs -------------------------------------------

missing=()
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $install -eq 1 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "== installing ${missing[*]} (apt-get)"
    apt-get update -qq
    # The package may try to start a system nginx; ours never uses it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "run.sh: missing: ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
    exit 69
  fi
fi
missing=()
for tool in cargo taskset timeout getconf awk; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "run.sh: missing: ${missing[*]} (cargo: the Rust toolchain 1.95; the rest: Debian util-linux, coreutils, libc-bin, mawk)" >&2
  exit 69
fi
cpus=$(getconf _NPROCESSORS_ONLN)
if (( cpus < 2 )); then
  echo "run.sh: needs 2 CPUs (wrk on CPU 0, the servers on CPU 1); this machine has $cpus" >&2
  exit 69
fi
clk_tck=$(getconf CLK_TCK)

echo "== building (release)"
(cd "$root" && cargo build --release --locked --quiet \
  -p pkce-proxy --bin pkce-proxy -p benches --bin load_upstream --bin load_report)
bin="$root/target/release"
proxy_bin="$bin/pkce-proxy"
proxy_build="release build"
pgo_flag=""
if [[ $pgo -eq 1 ]]; then
  pgo_flag=" --pgo"
  echo "== building the profile-guided pkce-proxy (load/pgo.sh)"
  pgo_args=()
  [[ $install -eq 1 ]] || pgo_args+=(--no-install)
  proxy_bin=$("$here/pgo.sh" "${pgo_args[@]}" | tail -n 1)
  [[ -x "$proxy_bin" ]] || { echo "run.sh: load/pgo.sh gave no binary" >&2; exit 1; }
  proxy_build="profile-guided release build (load/pgo.sh)"
fi

if [[ -z "$out" ]]; then
  out="$root/target/load/$(date -u +%Y%m%dT%H%M%SZ)"
fi
mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/pkce-load.XXXXXX")"

# --- processes: started here, stopped here -------------------------------

started=()
cleanup() {
  local pid
  for pid in "${started[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${started[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=ports.sh
source "$here/ports.sh"
wait_port() {
  local what=$1 port=$2 pid=$3
  for _ in $(seq 1 100); do
    if ! port_free "$port"; then return; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: $what exited at start; its log:" >&2
      cat "$work/$what.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  echo "run.sh: $what did not listen on port $port within 10 s" >&2
  exit 1
}

upstream_port=$(pick_port)
taskset -c 1 "$bin/load_upstream" "127.0.0.1:$upstream_port" >"$work/upstream.log" 2>&1 &
upstream_pid=$!
started+=("$upstream_pid")
wait_port upstream "$upstream_port" "$upstream_pid"

nginx_port=$(pick_port)
mkdir -p "$work/nginx"
sed -e "s|@PREFIX@|$work/nginx|g" -e "s|@LISTEN@|127.0.0.1:$nginx_port|g" \
  -e "s|@UPSTREAM@|127.0.0.1:$upstream_port|g" "$here/nginx.conf.in" >"$work/nginx/nginx.conf"
taskset -c 1 nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" \
  -g 'daemon off;' >"$work/nginx.log" 2>&1 &
nginx_pid=$!
started+=("$nginx_pid")
wait_port nginx "$nginx_port" "$nginx_pid"

# Logs at warn: nginx runs with its access log off. A large store, so that
# the authorize workload (codes never redeemed) never fills it.
start_proxy() {
  local name=$1 program=$2 port=$3
  PKCE_PROXY_LOG=warn taskset -c 1 "$program" \
    --upstream "http://127.0.0.1:$upstream_port" \
    --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
    --max-entries 50000000 >"$work/$name.log" 2>&1 &
  last_pid=$!
  started+=("$last_pid")
  wait_port "$name" "$port" "$last_pid"
}
proxy_port=$(pick_port)
start_proxy pkce-proxy "$proxy_bin" "$proxy_port"
proxy_pid=$last_pid
before_port=""
before_pid=""
if [[ -n "$compare" ]]; then
  before_port=$(pick_port)
  start_proxy pkce-proxy-before "$compare" "$before_port"
  before_pid=$last_pid
fi

port_of() {
  case "$1" in
    direct) echo "$upstream_port" ;;
    nginx) echo "$nginx_port" ;;
    pkce-proxy) echo "$proxy_port" ;;
    pkce-proxy-before) echo "$before_port" ;;
  esac
}
# The processes whose CPU time is the target's cost.
pids_of() {
  case "$1" in
    direct) echo "$upstream_pid" ;;
    nginx) echo "$nginx_pid $(cat "/proc/$nginx_pid/task/"*/children 2>/dev/null)" ;;
    pkce-proxy) echo "$proxy_pid" ;;
    pkce-proxy-before) echo "$before_pid" ;;
  esac
}
# utime + stime, in clock ticks, summed over processes (all their threads).
cpu_ticks() {
  local total=0 pid t
  for pid in "$@"; do
    t=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
    total=$(( total + t ))
  done
  echo "$total"
}

# --- preflight: every target answers every workload correctly -----------

verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk
challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM
redirect='https%3A%2F%2Fclient.example%2Fcb'
authorize_path="/authorize?response_type=code&client_id=bench&redirect_uri=$redirect&state=s1&code_challenge=$challenge&code_challenge_method=S256"
form='Content-Type: application/x-www-form-urlencoded'
status_of() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
code_from() {
  curl -s -o /dev/null -w '%{redirect_url}' "$1" | sed -n 's/.*[?&]code=\([^&#]*\).*/\1/p'
}
echo "== preflight"
for t in "${targets[@]}"; do
  base="http://127.0.0.1:$(port_of "$t")"
  [[ $(status_of "$base/other") == 200 ]] || { echo "run.sh: $t: /other is not 200" >&2; exit 1; }
  location=$(curl -s -o /dev/null -w '%{redirect_url}' "$base$authorize_path")
  [[ "$location" == *"code="*"state=s1"* ]] || { echo "run.sh: $t: /authorize gave Location $location" >&2; exit 1; }
  [[ $(status_of -H "$form" -d "grant_type=refresh_token&refresh_token=r&client_id=bench" "$base/token") == 200 ]] \
    || { echo "run.sh: $t: refresh_token grant is not 200" >&2; exit 1; }
  code=$(code_from "$base$authorize_path")
  [[ $(status_of -H "$form" -d "grant_type=authorization_code&code=$code&code_verifier=$verifier&client_id=bench&redirect_uri=$redirect" "$base/token") == 200 ]] \
    || { echo "run.sh: $t: a code with the right verifier was refused" >&2; exit 1; }
done
# PKCE is enforced: pkce-proxy refuses a wrong verifier and a missing challenge.
base="http://127.0.0.1:$proxy_port"
code=$(code_from "$base$authorize_path")
[[ $(status_of -H "$form" -d "grant_type=authorization_code&code=$code&code_verifier=${verifier/d/e}&client_id=bench&redirect_uri=$redirect" "$base/token") == 400 ]] \
  || { echo "run.sh: pkce-proxy accepted a wrong verifier" >&2; exit 1; }
[[ $(status_of "$base/authorize?response_type=code&client_id=bench&redirect_uri=$redirect") == 400 ]] \
  || { echo "run.sh: pkce-proxy accepted an authorization request without a challenge" >&2; exit 1; }
echo "   every target answers; pkce-proxy enforces PKCE"

# --- the runs -------------------------------------------------------------

for w in $workloads; do
  cat "$here/common.lua" "$here/$w.lua" >"$work/$w.lua"
done

runs="$out/runs.tsv"
: >"$runs"
failures=0

# One wrk run; prints the RESULT fields as "key=value" words.
drive() {
  local target=$1 workload=$2 seconds=$3
  timeout --signal=KILL $(( seconds + 30 )) \
    taskset -c 0 wrk -t1 -c "$connections" -d "${seconds}s" --latency \
    -s "$work/$workload.lua" "http://127.0.0.1:$(port_of "$target")" \
    2>&1 | sed -n 's/^RESULT //p'
}

field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$2"; }

if (( warmup > 0 )); then
  echo "== warm-up (${warmup}s a run, not recorded)"
  for w in $workloads; do
    for t in "${targets[@]}"; do
      drive "$t" "$w" "$warmup" >/dev/null
    done
  done
fi

loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "== $rounds round(s) of ${duration}s runs, $connections connections"
for round in $(seq 1 "$rounds"); do
  # Rotate the order of the targets each round.
  shift_by=$(( (round - 1) % ${#targets[@]} ))
  order=("${targets[@]:shift_by}" "${targets[@]:0:shift_by}")
  for w in $workloads; do
    for t in "${order[@]}"; do
      read -r -a pids <<<"$(pids_of "$t")"
      before=$(cpu_ticks "${pids[@]}")
      up_before=$(cpu_ticks "$upstream_pid")
      result=$(drive "$t" "$w" "$duration")
      after=$(cpu_ticks "${pids[@]}")
      up_after=$(cpu_ticks "$upstream_pid")
      requests=$(field requests "$result")
      if [[ -z "$requests" || "$requests" -eq 0 ]]; then
        echo "run.sh: round $round, $w, $t: wrk reported no requests" >&2
        exit 1
      fi
      bad=$(field bad "$result")
      status_errors=$(field status_errors "$result")
      socket_errors=$(field socket_errors "$result")
      if (( bad + status_errors + socket_errors > 0 )); then
        echo "   round $round $w $t: $bad bad answers, $status_errors HTTP errors, $socket_errors socket errors" >&2
        failures=$(( failures + 1 ))
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$t" "$requests" \
        "$(field duration_us "$result")" $(( after - before )) $(( up_after - up_before )) \
        "$clk_tck" "$(field p50_us "$result")" "$(field p99_us "$result")" >>"$runs"
      printf '   round %s %-9s %-10s %8s requests  %s\n' "$round" "$w" "$t" "$requests" \
        "$( [[ $w == flow ]] && echo "($(field authorizes "$result") authorizations, $(field tokens "$result") tokens)")"
      sleep 0.5
    done
  done
done
finished_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "## Load benchmark, $started_at to $finished_at"
  echo
  echo "- command: \`benches/load/run.sh --rounds $rounds --duration $duration --connections $connections --warmup $warmup --workloads \"$workloads\"${compare:+ --compare $compare}$pgo_flag\`"
  echo "- pkce-proxy: $proxy_build"
  echo "- machine: $cpus CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)$(grep -q sha_ni /proc/cpuinfo && echo ' (SHA-NI)'), $(uname -sr)"
  echo "- $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(rustc -V 2>/dev/null || echo rustc unknown)"
  echo "- load average at start: $loadavg_start; at end: $loadavg_end"
  echo "- wrk: 1 thread on CPU 0, $connections connections; servers on CPU 1"
  echo
  "$bin/load_report" "$runs"
} | tee "$out/report.md"
echo
echo "raw runs: $runs; report: $out/report.md"
if (( failures > 0 )); then
  echo "run.sh: $failures run(s) had bad answers or errors; the figures above are not valid" >&2
  exit 1
fi
