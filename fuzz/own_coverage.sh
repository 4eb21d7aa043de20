#!/usr/bin/env bash
# Edges of tripflow's own code (functions under src/) that a corpus covers, per file:
# the plateau measure of a campaign, where libFuzzer's own count also takes in
# DataFusion, clap and serde. Runs every unit once (-runs=0) with -print_coverage=1.
#
#   fuzz/own_coverage.sh TARGET CORPUS_DIR...
#   fuzz/own_coverage.sh decode_validate tests/fuzz/decode_validate /tmp/new-units
#
# Needs the fuzz build (cargo +nightly fuzz build, from fuzz/) and llvm-symbolizer.
set -euo pipefail
target=${1:?give a fuzz target}
shift
src=$(cd "$(dirname "$0")/.." && pwd)/src/
bin=${CARGO_TARGET_DIR:-$(dirname "$0")/target}/x86_64-unknown-linux-gnu/release/$target
"$bin" -runs=0 -print_coverage=1 -timeout=30 "$@" 2>&1 | grep "COVERED_FUNC" | grep -F "$src" |
  python3 -c '
import re, sys
src = sys.argv[1]
per, covered, total = {}, 0, 0
for line in sys.stdin:
    m = re.search(r"(UN)?COVERED_FUNC: hits: \d+ edges: (\d+)/(\d+) .* (/\S+):\d+$", line)
    if not m:
        continue
    c, n = (0 if m.group(1) else int(m.group(2))), int(m.group(3))
    f = "src/" + m.group(4)[len(src):]
    per.setdefault(f, [0, 0])
    per[f][0] += c
    per[f][1] += n
    covered += c
    total += n
print(f"tripflow edges covered: {covered} of {total} in the functions listed")
for f, (c, n) in sorted(per.items()):
    print(f"  {f}: {c}/{n}")
' "$src"
