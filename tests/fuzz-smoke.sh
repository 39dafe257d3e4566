#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a few seconds (FUZZ_SECONDS, default 5),
# starting from fuzz/seeds/<target>: proves that each target builds and that its properties hold
# on a short run. The build is unoptimised (`--dev`, with debug assertions, overflow checks and
# AddressSanitizer): it takes half the time of the optimised one that long runs want, and a
# few seconds' run needs no speed. Installs cargo-fuzz (crates.io) when it is missing. cargo-fuzz passes nightly
# flags (-Zsanitizer), which the pinned stable toolchain accepts with RUSTC_BOOTSTRAP=1.
# Longer runs: see the README's Fuzzing section.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-5}"
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

cargo fuzz build --dev
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    if cargo fuzz run --dev "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" >"$log" 2>&1; then
        echo "fuzz $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
        rm -f "$log"
    else
        tail -n 80 "$log" >&2
        echo "fuzz $target: FAILED (log: $log; the crashing input is under fuzz/artifacts/$target/)" >&2
        exit 1
    fi
done
