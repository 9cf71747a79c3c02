#!/usr/bin/env bash
# A short smoke run of every fuzz target in fuzz/ (cargo-fuzz, libFuzzer).
#
#   scripts/fuzz-smoke.sh              # every target, 30 s each
#   FUZZ_SECONDS=300 scripts/fuzz-smoke.sh json_split config_load
#
# Installs cargo-fuzz if it is missing. Uses a nightly toolchain (cargo-fuzz
# needs one for its coverage instrumentation); without one, and if rustup
# cannot fetch it, the targets are built on stable without coverage and run
# blind (random inputs and the seeds only), which still catches panics but
# explores far less; the script says so.
#
# The corpus grows in fuzz/corpus/<target>/ (not committed), seeded from
# fuzz/seeds/<target>/. A crash leaves its input in fuzz/artifacts/<target>/
# and makes the script exit 1 after the other targets ran; turn each such
# input into a regression test of the main suite. Not part of .ci/run (CI
# time); see the README, "Fuzzing".
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-30}"
ALL=(trigger_extract journal_record journal_salvage json_split config_load)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

TOOLCHAIN=""
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    TOOLCHAIN="+nightly"
elif rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    TOOLCHAIN="+nightly"
fi

# The fuzz crate's own flags: debug assertions (overflow checks) on; no
# AddressSanitizer (the crate forbids unsafe code, and the sanitizer
# doubles the build on a shared machine); one process per target.
LIBFUZZER_ARGS=(-rss_limit_mb=2048 -timeout=20 -print_final_stats=1)

# journal_salvage writes a small journal per input: on a RAM disk when
# there is one.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

failed=()
summary=()
if [ -n "$TOOLCHAIN" ]; then
    cargo $TOOLCHAIN fuzz build --fuzz-dir fuzz -O -a --sanitizer none
fi

for target in "${TARGETS[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    log="$(mktemp)"
    echo "fuzz-smoke: $target for ${SECONDS_EACH}s"
    if [ -n "$TOOLCHAIN" ]; then
        status=0
        cargo $TOOLCHAIN fuzz run --fuzz-dir fuzz -O -a --sanitizer none "$target" "$corpus" "${seeds[@]}" -- \
            -max_total_time="$SECONDS_EACH" "${LIBFUZZER_ARGS[@]}" >"$log" 2>&1 || status=$?
    else
        echo "fuzz-smoke: no nightly toolchain: building $target on stable without coverage (blind run)"
        (cd fuzz && cargo build --release --bin "$target" >/dev/null)
        status=0
        "fuzz/target/release/$target" "$corpus" "${seeds[@]}" -max_total_time="$SECONDS_EACH" \
            -artifact_prefix="fuzz/artifacts/$target/" "${LIBFUZZER_ARGS[@]}" >"$log" 2>&1 || status=$?
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || true)"
    files="$(find "$corpus" -type f | wc -l)"
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        echo "fuzz-smoke: $target FAILED (exit $status); the last lines:"
        tail -n 40 "$log"
        summary+=("$target: ${SECONDS_EACH}s, ${runs:-?} runs, FAILED, input in fuzz/artifacts/$target/")
    else
        summary+=("$target: ${SECONDS_EACH}s, ${runs:-?} runs, coverage ${cov:-n/a}, corpus $files files, no crash")
    fi
    rm -f "$log"
done

echo
echo "fuzz-smoke summary (toolchain ${TOOLCHAIN:-stable, blind}):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz-smoke: crashes in: ${failed[*]}"
    exit 1
fi
