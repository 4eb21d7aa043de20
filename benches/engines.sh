#!/usr/bin/env bash
# The embedded trip-table engines side by side, stage by stage, on the same generated
# files: the LSM table (the default) and SQLite (an empty trips.sqlite in a new home
# chooses it), in turn, so both see the same machine.
#
#   benches/engines.sh TRIPS [ROUNDS] [ENGINES]
#   benches/engines.sh 1000000 3            # 1M trips, three rounds of each engine
#   benches/engines.sh 10000000 1 lsm       # 10M trips, the LSM table only
#
# Each round, for each engine, in a new home: `tripflow produce` into the embedded
# stream, then `tripflow ingest` of all of it, then `tripflow kpi --all`, each its own
# process, so each stage's wall time and peak RSS (/usr/bin/time) are its own. Then
# `tripflow run` of the same files in another new home (produce beside ingest, then kpi).
# Needs a release build (`cargo build --release`). Work files go to $WORK (default: a
# new folder under /tmp; 10M trips take about 12 GB).
set -euo pipefail
trips=${1:?give the number of trips}
rounds=${2:-1}
engines=${3:-"lsm sqlite"}
. "$(dirname "$0")/common.sh"

# timed NAME COMMAND...: runs it, prints "NAME wall s, peak MiB".
timed() {
  run_timed "$@"
  awk -v n="$1" -v w="$wall" -v r="$rss" 'BEGIN { printf "%s %.1f s, %.0f MiB", n, w, r / 1024 }'
}

for round in $(seq "$rounds"); do
  for engine in $engines; do
    home=$work/home-$engine
    new_home "$home" "$([ "$engine" = sqlite ] && echo trips.sqlite)"
    line="$engine round $round, $trips trips: $(timed produce "$bin" produce --home "$home" "${files[@]}")"
    line+="; $(timed ingest "$bin" ingest --home "$home" --report "$work/ingest.json")"
    line+=" ($(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("{:,} events, {:,} writes".format(r["read"], r["store_writes"]))' "$work/ingest.json"))"
    line+="; $(timed 'kpi --all' "$bin" kpi --all --home "$home" --out "$work/out")"
    line+="; table $( (du -sm "$home/trips" "$home/trips.sqlite" 2>/dev/null || true) | awk '{s+=$1} END {print s}') MB"
    echo "$line"
    new_home "$home" "$([ "$engine" = sqlite ] && echo trips.sqlite)"
    echo "$engine round $round, $trips trips: $(timed run "$bin" run --home "$home" --out "$work/out" "${files[@]}" \
      --report "$work/run.json") ($(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["stages"]; print("produce {:.1f} s beside ingest {:.1f} s, {:,.0f} events/s; kpi {:.1f} s".format(s["produce_s"], s["ingest_s"], s["ingest_events_per_s"], s["kpi_s"]))' "$work/run.json"))"
  done
done
