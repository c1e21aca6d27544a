# Helpers sourced by the load scripts: loopback ports, and the processes a
# script starts.

# Whether nothing listens on 127.0.0.1:$1.
port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A free port between 20000 and 49999, or exit 1.
pick_port() {
  local p
  for _ in $(seq 1 100); do
    p=$(( 20000 + RANDOM % 30000 ))
    if port_free "$p"; then echo "$p"; return; fi
  done
  echo "$(basename "$0"): no free port found" >&2
  exit 1
}

# Makes a temporary directory, $work (named after $1), and the list
# $started, to which the script adds every process it starts. On exit those
# processes, and only those, are stopped and waited for, and $work goes.
own_processes() {
  work="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  started=()
  trap stop_own_processes EXIT
}

stop_own_processes() {
  local pid
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
