#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, seeded with the kernel-captured packets in
# proto/golden/. usage: fuzz/run.sh [SECONDS_PER_TARGET (default 600)] [TARGET ...]
# Sanitizer: stable Rust has none, so the default is `-s none` (panics, overflows in debug
# assertions, and aborts are still caught). FUZZ_SANITIZER=address uses AddressSanitizer, which
# needs RUSTC_BOOTSTRAP=1 on the stable toolchain (this script sets it in that case).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
san=${FUZZ_SANITIZER:-none}
[ "$san" = none ] || export RUSTC_BOOTSTRAP=1

# Seeds: every golden datagram for decap_vxlan, its inner IPv4 packet for the others.
seed() {
  local dir=fuzz/corpus/$1 mode=$2
  mkdir -p "$dir"
  python3 - "$dir" "$mode" proto/golden/*.txt <<'PY'
import sys, os
d, mode, files = sys.argv[1], sys.argv[2], sys.argv[3:]
for f in files:
    for line in open(f):
        parts = line.split()
        if len(parts) != 3 or line.startswith("#"):
            continue
        data = bytes.fromhex(parts[2])
        if mode == "inner":
            data = data[22:]
        name = os.path.join(d, "golden-%s-%s" % (os.path.basename(f).split(".")[0], parts[0]))
        open(name, "wb").write(data)
PY
  # JSON fixtures (lease records, network configs) seed the record parsers.
  if [ "$mode" = json ]; then
    find proto -name '*.json' -exec cp {} "$dir"/ \;
  fi
}

for t in "${targets[@]}"; do
  case "$t" in
    decap_vxlan|decap_vxlan6) seed "$t" vxlan ;;
    lease_record|network_config) seed "$t" json ;;
    *) seed "$t" inner ;;
  esac
  echo "== fuzzing $t for ${secs}s (sanitizer: $san)"
  log=fuzz/artifacts/$t.log
  mkdir -p fuzz/artifacts
  cargo fuzz run -s "$san" -O "$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 | tee "$log" |
    grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss|==|SUMMARY|panicked)' || true
  if grep -qE 'panicked|SUMMARY: |deadly signal|ERROR: libFuzzer' "$log"; then
    echo "fuzz target $t FAILED; see $log and fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzzing done: ${#targets[@]} targets, ${secs}s each"
