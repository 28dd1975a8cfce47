#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and replays the committed seed corpus
# (fuzz/corpus/<target>/) through it; any crash or failed invariant fails.
#
#   scripts/fuzz.sh                    # build all targets, replay all seeds
#   scripts/fuzz.sh krl_parse          # only the named target(s)
#   FUZZ_SECONDS=60 scripts/fuzz.sh    # then fuzz each target for 60 s
#
# Runs on stable Rust with `cargo fuzz build -s none` (libFuzzer, coverage
# instrumentation, no sanitizer, debug assertions on so integer overflow
# panics). It never installs a toolchain. When it cannot fuzz here it says
# why and exits 0 (SKIPPED), unless FUZZ_REQUIRED=1, in which case it fails:
#   - cargo-fuzz is missing:  cargo install cargo-fuzz --locked
#   - the toolchain cannot build the targets without nightly features.
#
# New inputs found with FUZZ_SECONDS go to fuzz/corpus-run/<target>/ (not
# committed); crashes to fuzz/artifacts/<target>/. Add a crash input to
# fuzz/corpus/<target>/ together with its fix.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'scripts/fuzz.sh: error: %s\n' "$*" >&2; exit 1; }
skip() {
    printf 'scripts/fuzz.sh: SKIPPED: %s\n' "$*" >&2
    if [ "${FUZZ_REQUIRED:-0}" = 1 ]; then
        exit 1
    fi
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
cargo fuzz --version >/dev/null 2>&1 ||
    skip "cargo-fuzz is not installed; install it with: cargo install cargo-fuzz --locked"

all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^mayfly-fuzz$')
selected="$*"
if [ "$#" -gt 0 ]; then
    targets="$*"
    for t in $targets; do
        grep -qx "$t" <<<"$all_targets" || die "no fuzz target $t (have: $(echo $all_targets))"
    done
else
    targets=$all_targets
fi

# Same flags for build and run, so the run never rebuilds.
flags=(-s none --debug-assertions)
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release

say "building fuzz targets ($(rustc --version))"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
build() {
    # `cargo fuzz build` takes at most one target; without one it builds all.
    if [ "$#" -eq 0 ]; then
        (cd fuzz && cargo fuzz build "${flags[@]}")
    else
        for t in "$@"; do
            (cd fuzz && cargo fuzz build "${flags[@]}" "$t") || return 1
        done
    fi
}
# shellcheck disable=SC2086
if ! build $selected >"$log" 2>&1; then
    if grep -Eq 'only accepted on the nightly compiler|requires a nightly|nightly-only|-Z unstable-options' "$log"; then
        tail -n 20 "$log" >&2
        skip "this toolchain ($(rustc --version)) cannot build the fuzz targets without nightly features; not installing nightly"
    fi
    cat "$log" >&2
    die "building the fuzz targets failed"
fi

status=0
for t in $targets; do
    bin=$bin_dir/$t
    [ -x "$bin" ] || die "built, but $bin is missing"
    seeds=(fuzz/corpus/"$t"/*)
    [ -e "${seeds[0]}" ] || die "no seed corpus in fuzz/corpus/$t"
    # Individual files: libFuzzer runs each once and writes nothing back.
    if "$bin" -runs=0 "${seeds[@]}" >"$log" 2>&1; then
        say "$t: ${#seeds[@]} seeds replayed, no crash"
    else
        cat "$log" >&2
        say "$t: FAILED on the seed corpus"
        status=1
        continue
    fi
    if [ -n "${FUZZ_SECONDS:-}" ]; then
        mkdir -p fuzz/corpus-run/"$t" fuzz/artifacts/"$t"
        if "$bin" -max_total_time="$FUZZ_SECONDS" \
            -artifact_prefix=fuzz/artifacts/"$t"/ \
            fuzz/corpus-run/"$t" fuzz/corpus/"$t" >"$log" 2>&1; then
            say "$t: fuzzed ${FUZZ_SECONDS}s: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)"
        else
            tail -n 40 "$log" >&2
            say "$t: CRASH while fuzzing (input in fuzz/artifacts/$t/)"
            status=1
        fi
    fi
done
exit "$status"
