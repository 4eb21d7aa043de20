#!/usr/bin/env bash
# Ingest with and without --live-kpis, side by side in turn on the same generated stream:
# what keeping the KPIs live costs (docs/performance.md#live-kpis).
#
#   cargo build --release
#   benches/live.sh 1000000 3
#
# The stream is produced once. Each round, in a new home with a copy of that stream:
# `tripflow ingest` alone, then `tripflow ingest --live-kpis` (which publishes once, at
# the end, as a run that catches up does); each with its wall time and peak RSS
# (/usr/bin/time), and the round's ratio of the two times. Then the nightly run over the
# live table, whose certificate must say every date is equal.
set -euo pipefail
trips=${1:?give the number of trips}
rounds=${2:-3}
. "$(dirname "$0")/common.sh"

stream=$work/stream-$trips
if [ ! -d "$stream/stream" ]; then
  new_home "$stream"
  "$bin" produce -q --home "$stream" "${files[@]}" >/dev/null
fi
events=$((2 * trips))
home=$work/home
for round in $(seq "$rounds"); do
  new_home "$home"
  cp -r "$stream/stream" "$home/"
  run_timed plain "$bin" ingest -q --home "$home"
  plain=$wall plain_rss=$rss
  new_home "$home"
  cp -r "$stream/stream" "$home/"
  run_timed live "$bin" ingest -q --home "$home" --live-kpis --out "$work/out"
  awk -v r="$round" -v p="$plain" -v l="$wall" -v pr="$plain_rss" -v lr="$rss" -v n="$events" 'BEGIN {
    printf "round %d: ingest %.1f s (%'"'"'.0f events/s), %d MiB; with --live-kpis %.1f s (%'"'"'.0f events/s), %d MiB; speed kept %.2f\n",
      r, p, n / p, pr / 1024, l, n / l, lr / 1024, p / l }'
done
"$bin" kpi -q --home "$home" --all --out "$work/out" | grep "live KPIs"
