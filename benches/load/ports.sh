# Loopback port helpers, sourced by run.sh and callgrind.sh.

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
