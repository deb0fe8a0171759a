#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and reports executions and crashes.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# Installs cargo-fuzz 0.13.2 from crates.io when it is missing. Works on the stable toolchain:
# cargo-fuzz's `-Z` flags are allowed through RUSTC_BOOTSTRAP=1. Seeds come from fuzz/corpus/
# (committed, read only); what the fuzzer finds goes to fuzz/corpus-run/ and crashes to
# fuzz/artifacts/ (both gitignored). Exits non-zero if any target crashed, leaked or timed out.
# Env: FUZZ_TARGETS="a b" runs only those; CARGO_TARGET_DIR is honoured.
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/fuzz"
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked

cd "$fuzz"
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
# Release with debug assertions (integer overflow panics), AddressSanitizer (cargo-fuzz default).
cargo fuzz build -O --debug-assertions
triple="$(rustc -vV | sed -n 's/^host: //p')"
bindir="${CARGO_TARGET_DIR:-$fuzz/target}"
case "$bindir" in /*) ;; *) bindir="$fuzz/$bindir" ;; esac
bindir="$bindir/$triple/release"

mkdir -p corpus-run artifacts logs
started=$(date +%s)
failed=0
total_execs=0
printf '%-18s %14s %8s  %s\n' target executions exec/s result
for t in $targets; do
    mkdir -p "corpus-run/$t" "corpus/$t" "artifacts/$t"
    dict=()
    [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
    log="logs/$t.log"
    set +e
    "$bindir/$t" "corpus-run/$t" "corpus/$t" "${dict[@]}" \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=25 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ "$rc" -eq 0 ] && [ -z "$artifact" ]; then
        result=ok
    else
        result="CRASH (exit $rc) ${artifact:+fuzz/$artifact} log fuzz/$log"
        failed=1
    fi
    total_execs=$((total_execs + ${execs:-0}))
    printf '%-18s %14s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
done
echo "total: $total_execs executions in $(( $(date +%s) - started )) s"
exit "$failed"
