#!/usr/bin/env bash
# Two builds of tripflow side by side on the same generated files, in turn, so both see
# the same machine: how a speed-up is measured on a VM whose times move by 10-20%.
#
#   benches/builds.sh OLD_BINARY NEW_BINARY TRIPS [ROUNDS]
#   git stash; cargo build --release; cp target/release/tripflow /tmp/tripflow-old
#   git stash pop; cargo build --release
#   benches/builds.sh /tmp/tripflow-old target/release/tripflow 1000000 2
#
# The stream is produced once (by the new build). Each round, for each build, in a new
# home: `tripflow ingest` of a copy of that stream, alone, then `tripflow run` of the
# files; each with its wall time and peak RSS (/usr/bin/time). Work files go to $WORK
# (default: a new folder under /tmp).
set -euo pipefail
old=${1:?give the old binary}
new=${2:?give the new binary}
trips=${3:?give the number of trips}
rounds=${4:-2}
TRIPFLOW=$new
. "$(dirname "$0")/common.sh"

stream=$work/stream-$trips
if [ ! -d "$stream/stream" ]; then
  new_home "$stream"
  "$new" produce -q --home "$stream" "${files[@]}" >/dev/null
fi
events=$((2 * trips))
for round in $(seq "$rounds"); do
  for build in old new; do
    b=${!build}
    home=$work/home
    new_home "$home"
    cp -r "$stream/stream" "$home/"
    run_timed ingest "$b" ingest -q --home "$home"
    line="round $round, $build: ingest $(rate $events "$wall"), $((rss / 1024)) MiB"
    new_home "$home"
    run_timed run "$b" run -q --home "$home" --out "$work/out" "${files[@]}"
    echo "$line; run $wall s, $((rss / 1024)) MiB"
  done
done
