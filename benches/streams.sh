#!/usr/bin/env bash
# The embedded stream's two formats side by side on the same generated files: the
# segment log (the default) and the SQLite table of homes made before it (an empty
# stream.sqlite in a new home chooses it), in turn, so both see the same machine.
#
#   benches/streams.sh TRIPS [ROUNDS] [FORMATS]
#   benches/streams.sh 1000000 3             # 1M trips, three rounds of each format
#   benches/streams.sh 10000000 1 log        # 10M trips, the log only
#
# Each round, for each format, in a new home: `tripflow produce` alone (what the stream
# takes in), then `tripflow ingest` of all of it (what it gives out, beside the merge
# into the LSM trip table), each its own process with its wall time and peak RSS
# (/usr/bin/time), and the stream's size on disk. Then `tripflow run` of the same files
# in another new home. Needs a release build (`cargo build --release`). Work files go
# to $WORK (default: a new folder under /tmp).
set -euo pipefail
trips=${1:?give the number of trips}
rounds=${2:-1}
formats=${3:-"log sqlite"}
. "$(dirname "$0")/common.sh"

for round in $(seq "$rounds"); do
  for format in $formats; do
    home=$work/home-$format
    new_home "$home" "$([ "$format" = sqlite ] && echo stream.sqlite)"
    run_timed produce "$bin" produce --home "$home" "${files[@]}"
    events=$((2 * trips))
    line="$format round $round, $trips trips: produce $(rate $events "$wall"), $((rss / 1024)) MiB"
    line+="; stream $( (du -sm "$home/stream" "$home/stream.sqlite"* 2>/dev/null || true) | awk '{s+=$1} END {print s}') MB"
    run_timed ingest "$bin" ingest --home "$home" --report "$work/ingest.json"
    line+="; ingest $(rate $events "$wall"), $((rss / 1024)) MiB"
    echo "$line"
    new_home "$home" "$([ "$format" = sqlite ] && echo stream.sqlite)"
    run_timed run "$bin" run --home "$home" --out "$work/out" "${files[@]}" --report "$work/run.json"
    echo "$format round $round, $trips trips: run $wall s, $((rss / 1024)) MiB ($(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["stages"]; print("produce {:.1f} s beside ingest {:.1f} s, {:,.0f} events/s; kpi {:.1f} s".format(s["produce_s"], s["ingest_s"], s["ingest_events_per_s"], s["kpi_s"]))' "$work/run.json"))"
  done
done
