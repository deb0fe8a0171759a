#!/usr/bin/env bash
# The whole test suite, set-up included, on a fresh machine:
#   1. install the real servers the integration tests start (scripts/install-services.sh);
#   2. cargo test --workspace --all-targets --features k8s,kafka --no-fail-fast (unit, integration,
#      bench smoke runs; `k8s` adds the TriggerAuthentication tests against a Kubernetes API double,
#      `kafka` the Kafka lag scaler and its tests against a real broker);
#   3. cargo test --workspace --doc --features k8s,kafka (the same features, so the build of
#      step 2 is reused rather than a second set of artifacts built).
# Each integration test starts its own servers on loopback and stops them itself, so
# nothing is left running. Extra arguments go to both cargo test runs (e.g. a test filter).
# Exits non-zero if any step failed; a failed install stops at once.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${CI:-}" = "true" ]; then
  export CARGO_TERM_COLOR=never
fi

suite_start=$SECONDS
failed=()
step() {
  local name=$1
  shift
  local t0=$SECONDS rc=0
  echo "==> ${name}: $*"
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "==> ${name}: ok in $((SECONDS - t0)) s"
  else
    echo "==> ${name}: FAILED (exit ${rc}) in $((SECONDS - t0)) s"
    failed+=("$name")
  fi
  return 0
}

step install-services scripts/install-services.sh
if [ ${#failed[@]} -gt 0 ]; then
  echo "==> cannot test without the services" >&2
  exit 1
fi
step cargo-test cargo test --workspace --all-targets --features k8s,kafka --no-fail-fast "$@"
step doc-tests cargo test --workspace --doc --features k8s,kafka "$@"

if [ ${#failed[@]} -gt 0 ]; then
  echo "==> FAILED: ${failed[*]} (total $((SECONDS - suite_start)) s)" >&2
  exit 1
fi
echo "==> all tests passed in $((SECONDS - suite_start)) s"
