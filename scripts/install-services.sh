#!/usr/bin/env bash
# Installs the real servers the integration tests start (each test starts its own
# instances on loopback; see tests/common). Idempotent: skips what is present.
set -euo pipefail

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

prometheus --version 2>&1 | head -1
prometheus-pushgateway --version 2>&1 | head -1

# Azurite (Azure Storage emulator) from npm, into <repo>/.services/azurite (gitignored).
# Pinned: 3.36+ need Node >= 21, and CI should not change when Node does.
AZURITE_VERSION=3.35.0
AZURITE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.services/azurite"
if ! "$AZURITE_DIR/node_modules/.bin/azurite" --version 2>/dev/null | grep -qx "$AZURITE_VERSION"; then
  command -v npm >/dev/null 2>&1 || { echo "npm is required to install azurite" >&2; exit 1; }
  echo "installing azurite@$AZURITE_VERSION into $AZURITE_DIR"
  mkdir -p "$AZURITE_DIR"
  [ -f "$AZURITE_DIR/package.json" ] || echo '{"name":"ebb-test-services","private":true}' > "$AZURITE_DIR/package.json"
  npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
fi
echo "azurite $("$AZURITE_DIR/node_modules/.bin/azurite" --version)"

# tansu (a Kafka-protocol broker) from crates.io, with its sqlite storage engine: the Kafka lag
# tests start it on loopback. A clean build takes about 15 minutes on 2 cores, so it is built
# once per machine and skipped when ~/.cargo/bin/tansu is there. Its build directory is
# temporary (about 1.6 GB) and removed afterwards.
TANSU_VERSION=0.6.0
TANSU_BIN="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
if ! "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "building tansu $TANSU_VERSION (cargo install; ~15 min on 2 cores)"
  tansu_build="$(mktemp -d)"
  CARGO_TARGET_DIR="$tansu_build" cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore,libsql --root "$(dirname "$(dirname "$TANSU_BIN")")" --quiet
  rm -rf "$tansu_build"
fi
echo "$("$TANSU_BIN" --version)"
