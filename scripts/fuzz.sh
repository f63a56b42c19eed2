#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target (fuzz/) for SECONDS each (default 60) and records the run.
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_TARGETS="manifest torch_pickle" scripts/fuzz.sh 30   # a subset
#   FUZZ_SANITIZER=none scripts/fuzz.sh                      # no AddressSanitizer (faster)
# For each target it first replays the committed crash regressions (fixtures/fuzz-regressions/TARGET/),
# then fuzzes from the committed seeds (fuzz/corpus/TARGET/, read only) into a working corpus that
# persists between runs on this machine (fuzz/work/, ignored by git). A crash is minimized into
# fuzz/artifacts/TARGET/. Each target's libFuzzer statistics are appended to docs/fuzz/runs.jsonl,
# and docs/fuzz/README.md is rendered from that record (scripts/fuzz-report.py).
# Exit status: 0 when no crash is open, 1 otherwise.

set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
. scripts/lib.sh
CARGO_FUZZ_VERSION=$(pinned CARGO_FUZZ_VERSION)
SANITIZER="${FUZZ_SANITIZER:-address}"
ALL_TARGETS="image_preprocess safetensors_header torch_zip torch_pickle manifest tokenizer_file tokenizer_encode index_file server_request"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"

CACHE="$(blip_cache)/cargo-fuzz-$CARGO_FUZZ_VERSION"
if [ ! -x "$CACHE/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --root "$CACHE" >&2
fi
export PATH="$CACHE/bin:$PATH"
# cargo fuzz passes nightly-only flags (-Zsanitizer, sanitizer coverage); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP, so no nightly toolchain has to be installed.
export RUSTC_BOOTSTRAP=1

declare -A DICT=(
  [safetensors_header]=fuzz/dicts/safetensors.dict
  [torch_zip]=fuzz/dicts/pickle.dict
  [torch_pickle]=fuzz/dicts/pickle.dict
  [manifest]=fuzz/dicts/json.dict
  [tokenizer_file]=fuzz/dicts/json.dict
  [index_file]=fuzz/dicts/json.dict
  [server_request]=fuzz/dicts/json.dict
)

# -a: debug assertions and overflow checks, so arithmetic on untrusted sizes that would wrap panics.
build=(-s "$SANITIZER" -a)
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates fuzz || echo -dirty)"
mkdir -p docs/fuzz fuzz/work
# FUZZ_SKIP_BUILD=1 reuses the binaries of the last build; the record then names that build's commit.
if [ -n "${FUZZ_SKIP_BUILD:-}" ] && [ -f fuzz/work/build-commit ]; then
  commit="$(cat fuzz/work/build-commit)"
else
  cargo fuzz build "${build[@]}" >&2
  echo "$commit" > fuzz/work/build-commit
fi
# The targets run as built (what `cargo fuzz run` does, without its rebuild check before each run,
# so a run is not held up by a source edit made meanwhile).
bin="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
[ "$SANITIZER" = address ] && export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"

status=0
for t in $TARGETS; do
  log="fuzz/work/$t.log"
  corpus="fuzz/work/corpus/$t"
  artifacts="fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"

  # Committed regressions must no longer crash.
  regressions=(); failing=0
  if [ -d "fixtures/fuzz-regressions/$t" ]; then
    mapfile -t regressions < <(find "fixtures/fuzz-regressions/$t" -type f | sort)
  fi
  if [ "${#regressions[@]}" -gt 0 ]; then
    if ! "$bin/$t" -runs=1 "${regressions[@]}" > "fuzz/work/$t.replay.log" 2>&1; then
      failing=1; echo "fuzz.sh: $t: a committed regression crashes again (fuzz/work/$t.replay.log)" >&2
    fi
  fi

  before=$(mktemp); ls "$artifacts" > "$before"
  args=(-max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=60 -rss_limit_mb=4096
        -artifact_prefix="$artifacts/")
  [ -n "${DICT[$t]:-}" ] && args+=(-dict="${DICT[$t]}")
  echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s" >&2
  start=$(date +%s.%N)
  rc=0; "$bin/$t" "${args[@]}" "$corpus" "fuzz/corpus/$t" > "$log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  crash=$(comm -13 "$before" <(ls "$artifacts") | grep -Ev '^(minimized|slow-unit)-' | head -n1 || true)
  rm -f "$before"
  minimized=""
  if [ -n "$crash" ]; then
    minimized="$artifacts/minimized-$crash"
    "$bin/$t" -minimize_crash=1 -runs=2000 -exact_artifact_path="$minimized" "$artifacts/$crash" \
      > "fuzz/work/$t.tmin.log" 2>&1 || true
    [ -f "$minimized" ] || minimized=""
    echo "fuzz.sh: $t: CRASH $artifacts/$crash (minimized: ${minimized:-none}; log $log)" >&2
    status=1
  elif [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: $t: libFuzzer exited $rc without an artifact (log $log)" >&2
    status=1
  fi
  [ "$failing" -ne 0 ] && status=1
  python3 scripts/fuzz-report.py record --log "$log" --target "$t" --start "$start" --end "$end" \
    --rc "$rc" --commit "$commit" --sanitizer "$SANITIZER" --crash "${crash:+$artifacts/$crash}" \
    --minimized "$minimized" --regressions "${#regressions[@]}" --regressions-failing "$failing" \
    >> docs/fuzz/runs.jsonl
done
python3 scripts/fuzz-report.py render docs/fuzz/runs.jsonl > docs/fuzz/README.md.part
mv docs/fuzz/README.md.part docs/fuzz/README.md
echo "fuzz.sh: recorded in docs/fuzz/runs.jsonl, summary in docs/fuzz/README.md" >&2
exit "$status"
