#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is
# missing (redis-server from Debian, the interop tests' Node packages from
# tests/interop/package-lock.json), then runs every test in the workspace.
# Extra arguments go to `cargo test` (for example --locked).
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  echo "$1" >&2
  exit 1
}

command -v cargo >/dev/null || need "cargo is missing: install the Rust toolchain (1.95)"
# The interop tests run oidc-provider and openid-client on Node.js.
for tool in node npm; do
  command -v "$tool" >/dev/null ||
    need "$tool is missing: install Node.js 20 or later (with npm) for the interop tests"
done

# The Redis tests start their own redis-server on a free loopback port.
if ! command -v redis-server >/dev/null; then
  command -v apt-get >/dev/null ||
    need "redis-server is missing and apt-get is not available: install Redis 6.2 or later"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "== installing redis-server (Debian)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # Only the tests' own servers are wanted, not the packaged service.
  $SUDO systemctl stop redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
echo "== $(redis-server --version)"

if [ ! -d tests/interop/node_modules ] || [ tests/interop/package-lock.json -nt tests/interop/node_modules ]; then
  echo "== npm ci (tests/interop: oidc-provider and openid-client, from package-lock.json)"
  npm ci --prefix tests/interop --no-audit --no-fund
fi

echo "== cargo test --workspace $*"
cargo test --workspace "$@"
