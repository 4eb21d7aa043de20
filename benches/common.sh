# Shared by benches/engines.sh, streams.sh, builds.sh and baseline_ratio.sh (sourced, not run):
# given $trips, sets $bin, $work, $data and the `files` flags, generating the input once.
# $DAYS (default 3, as `gen`) spreads the pickups over that many days.
bin=${TRIPFLOW:-$(dirname "$0")/../target/release/tripflow}
work=${WORK:-$(mktemp -d "/tmp/tripflow-$(basename "$0" .sh).XXXXXX")}
mkdir -p "$work"
days=${DAYS:-3}
data=$work/data-$trips
if [ "$days" != 3 ]; then data=$data-${days}d; fi
if [ ! -f "$data/trip_end.csv" ]; then
  "$bin" gen --trips "$trips" --seed 1 --days "$days" --out "$data" >/dev/null
fi
files=(--start "$data/trip_start.csv" --end "$data/trip_end.csv")

# run_timed NAME COMMAND...: runs COMMAND (stdout to $work/stdout) and sets $wall (s)
# and $rss (KiB), as /usr/bin/time reports them.
run_timed() {
  /usr/bin/time -f '%e %M' -o "$work/time" "${@:2}" >"$work/stdout"
  read -r wall rss <"$work/time"
}

# rate EVENTS SECONDS: "12.3 s (162,602 events/s)".
rate() { awk -v n="$1" -v w="$2" 'BEGIN { printf "%.1f s (%'"'"'.0f events/s)", w, n / w }'; }

# new_home DIR [FILE]: an empty home at DIR (and no $work/out), holding an empty FILE
# when given: an empty trips.sqlite or stream.sqlite makes tripflow keep that SQLite
# format in the home, as in a home made before the LSM table or the log stream.
new_home() {
  rm -rf "$1" "$work/out"
  mkdir -p "$1"
  if [ -n "${2:-}" ]; then : >"$1/$2"; fi
}
