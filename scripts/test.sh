#!/usr/bin/env bash
# The whole test suite, set-up included, on a fresh machine:
#   1. install the real servers the integration tests start (scripts/install-services.sh);
#   2. cargo test --workspace --all-targets --features k8s,kafka,integration --no-fail-fast (unit,
#      integration, bench smoke runs; `k8s` adds the Kubernetes API tests against its double,
#      `kafka` the Kafka lag scaler and its tests against a real broker, `integration` every
#      test that starts a real server);
#   3. cargo test --workspace --doc with the same features (the build of step 2 is reused);
#   4. cargo clippy --workspace --all-targets with the same features, warnings denied;
#   5. cargo check of the fuzz targets (fuzz/, a crate of its own).
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
features=k8s,kafka,integration
step cargo-test cargo test --workspace --all-targets --features "$features" --no-fail-fast "$@"
step doc-tests cargo test --workspace --doc --features "$features" "$@"
step clippy cargo clippy --workspace --all-targets --features "$features" -- -D warnings
# The fuzz targets are their own crate (fuzz/): nothing else builds them, so check they compile.
step fuzz-build cargo check --manifest-path fuzz/Cargo.toml --bins --locked

if [ ${#failed[@]} -gt 0 ]; then
  echo "==> FAILED: ${failed[*]} (total $((SECONDS - suite_start)) s)" >&2
  exit 1
fi
echo "==> all tests passed in $((SECONDS - suite_start)) s"
