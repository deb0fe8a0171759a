#!/usr/bin/env bash
# Installs the real servers the integration tests start (each test starts its own
# instances on loopback; see tests/common). Idempotent: skips what is present.
set -euo pipefail

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)
# The status page's browser test (tests/status_e2e.rs): headless Chromium and its WebDriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

prometheus --version 2>&1 | head -1
prometheus-pushgateway --version 2>&1 | head -1
chromium --version 2>&1 | head -1

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

# ---- Helm chart check tools (tests/helm_chart.rs, scripts/helm-chart-check.py) ------------------
# Into <repo>/.services/helm-tools (gitignored), pinned:
# - helm-python-sdk (PyPI): Helm v4's Go SDK (chart loader, template engine with sprig, lint)
#   bundled as a shared library in the wheel; renders the chart like `helm template` without a
#   helm binary (get.helm.sh is not reachable from CI).
# - kubernetes-validate (PyPI): Kubernetes OpenAPI schemas (up to 1.37) for built-in kinds.
# - @kubernetes-models/{keda,prometheus-operator,cert-manager} (npm): the CRDs' OpenAPI schemas
#   compiled to validators, for ScaledObject/TriggerAuthentication/ScaledJob, ServiceMonitor and
#   Certificate. (keda 2.0.0 declares node >= 22 but runs on Debian's node 20.)
HELM_SDK_VERSION=0.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
KEDA_MODELS_VERSION=2.0.0
PROM_OPERATOR_MODELS_VERSION=6.0.0
CERT_MANAGER_MODELS_VERSION=6.0.0
HELM_TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.services/helm-tools"
mkdir -p "$HELM_TOOLS_DIR"
if ! "$HELM_TOOLS_DIR/venv/bin/python" - "$HELM_SDK_VERSION" "$KUBERNETES_VALIDATE_VERSION" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
import helm_python, kubernetes_validate, yaml
assert version("helm-python-sdk") == sys.argv[1] and version("kubernetes-validate") == sys.argv[2]
PY
then
  echo "installing helm-python-sdk $HELM_SDK_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $HELM_TOOLS_DIR/venv"
  rm -rf "$HELM_TOOLS_DIR/venv"
  python3 -m venv "$HELM_TOOLS_DIR/venv"
  "$HELM_TOOLS_DIR/venv/bin/pip" install -q --disable-pip-version-check \
    "helm-python-sdk==$HELM_SDK_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" pyyaml
fi
helm_models_ok() {
  node -e '
    const [dir, ...want] = process.argv.slice(1);
    const pkgs = ["keda", "prometheus-operator", "cert-manager"];
    pkgs.forEach((p, i) => {
      const v = require(`${dir}/node_modules/@kubernetes-models/${p}/package.json`).version;
      if (v !== want[i]) process.exit(1);
    });' "$HELM_TOOLS_DIR" "$KEDA_MODELS_VERSION" "$PROM_OPERATOR_MODELS_VERSION" "$CERT_MANAGER_MODELS_VERSION" 2>/dev/null
}
if ! helm_models_ok; then
  command -v npm >/dev/null 2>&1 || { echo "npm is required to install the CRD schema packages" >&2; exit 1; }
  echo "installing @kubernetes-models CRD schemas into $HELM_TOOLS_DIR"
  [ -f "$HELM_TOOLS_DIR/package.json" ] || echo '{"name":"ebb-helm-tools","private":true}' > "$HELM_TOOLS_DIR/package.json"
  npm install --prefix "$HELM_TOOLS_DIR" --no-audit --no-fund --loglevel=error --engine-strict=false \
    "@kubernetes-models/keda@$KEDA_MODELS_VERSION" \
    "@kubernetes-models/prometheus-operator@$PROM_OPERATOR_MODELS_VERSION" \
    "@kubernetes-models/cert-manager@$CERT_MANAGER_MODELS_VERSION" >/dev/null
  helm_models_ok || { echo "CRD schema packages did not install" >&2; exit 1; }
fi
"$HELM_TOOLS_DIR/venv/bin/python" -c 'import helm_python as h; print("helm SDK", h.helm_sdk_version(), "(helm-python-sdk '"$HELM_SDK_VERSION"'), kubernetes-validate '"$KUBERNETES_VALIDATE_VERSION"'")'
# ---- end of Helm chart check tools -------------------------------------------------------------
