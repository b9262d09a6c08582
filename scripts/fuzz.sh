#!/usr/bin/env bash
# scripts/fuzz.sh — build every cargo-fuzz target and run each for a while.
#
#   scripts/fuzz.sh            each target for 600 s (the long run behind the closing notes)
#   scripts/fuzz.sh 20         each target for 20 s (the smoke run CI does)
#   TARGETS="demux" scripts/fuzz.sh 60
#
# Needs the nightly toolchain beside stable (cargo-fuzz uses sanitizers); installs cargo-fuzz
# from crates.io when missing. Prints executions and crashes per target; exits non-zero on a
# crash, leaving the reproducer under fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_EACH="${1:-600}"
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

rustup toolchain list 2>/dev/null | grep -q '^nightly' \
    || die "the nightly toolchain is needed for cargo-fuzz: rustup toolchain install nightly"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz >/dev/null
fi

targets="${TARGETS:-$(cargo +nightly fuzz list)}"
echo "==> building fuzz targets: ${targets//$'\n'/ }" >&2
cargo +nightly fuzz build >/dev/null

# Run the binaries built above, not `cargo fuzz run`: that would rebuild from the tree as it is
# when each target starts, so a long run would fuzz whatever was being edited meanwhile.
bin_dir="fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
status=0
for target in $targets; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="$(mktemp)"
    if "$bin_dir/$target" -artifact_prefix="fuzz/artifacts/$target/" -max_total_time="$SECONDS_EACH" \
        -print_final_stats=1 "fuzz/corpus/$target" >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
        echo "fuzz $target: ${SECONDS_EACH}s, $runs executions, 0 crashes"
    else
        echo "fuzz $target: CRASH — see fuzz/artifacts/$target/" >&2
        tail -40 "$log" >&2
        status=1
    fi
    rm -f "$log"
done
exit $status
