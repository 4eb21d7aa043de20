#!/usr/bin/env bash
# Issue 14's flatness figure: `tripflow ingest` alone of a SMALL stream, then of a BIG
# one, then of the small one again, each into a new table, in turn; prints each run's
# rate and store writes per trip, and the big stream's rate as a share of the small
# one's (against each neighbouring small run: this VM's speed drifts).
#
#   benches/scaling.sh [SMALL] [BIG] [BIG_DAYS] [ROUNDS]
#   benches/scaling.sh 1000000 10000000          # as the target is worded: 10x the trips in the same 3 days
#   benches/scaling.sh 1000000 10000000 30       # the big stream at the small one's density
#
# The small stream's pickups spread over 3 days (`gen`'s default), the big one's over
# BIG_DAYS. Work files go to $WORK (default: a new folder under /tmp); a 10M-trip stream
# takes about 5 GB.
set -euo pipefail
small=${1:-1000000}
big=${2:-10000000}
big_days=${3:-3}
rounds=${4:-1}

streams=()
for spec in "$small 3" "$big $big_days"; do
  read -r trips DAYS <<<"$spec"
  . "$(dirname "$0")/common.sh"
  export WORK=$work
  stream=$work/stream-$(basename "$data")
  if [ ! -d "$stream/stream" ]; then
    new_home "$stream"
    "$bin" produce -q --home "$stream" "${files[@]}" >/dev/null
  fi
  streams+=("$stream")
done

# ingest_once STREAM TRIPS: sets $eps (events/s) and prints the run.
ingest_once() {
  local home=$work/home
  new_home "$home"
  cp -r "$1/stream" "$home/"
  run_timed ingest "$bin" ingest -q --home "$home"
  local writes
  writes=$(sed -n 's/.* \([0-9]*\) store writes).*/\1/p' "$work/stdout")
  eps=$(awk -v n="$((2 * $2))" -v w="$wall" 'BEGIN { printf "%.0f", n / w }')
  echo "  $(basename "$1"): $(rate $((2 * $2)) "$wall"), $((rss / 1024)) MiB, $writes store writes ($(awk -v a="$writes" -v t="$2" 'BEGIN { printf "%.2f", a / t }') per trip)"
  rm -rf "$home"
}

for round in $(seq "$rounds"); do
  echo "round $round:"
  ingest_once "${streams[0]}" "$small"; before=$eps
  ingest_once "${streams[1]}" "$big"; big_rate=$eps
  ingest_once "${streams[0]}" "$small"; after=$eps
  awk -v b="$big_rate" -v x="$before" -v y="$after" \
    'BEGIN { printf "  big / small: %.0f%% of the run before, %.0f%% of the run after\n", 100 * b / x, 100 * b / y }'
done
