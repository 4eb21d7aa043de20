# Shared by benches/engines.sh and benches/baseline_ratio.sh (sourced, not run):
# given $trips, sets $bin, $work, $data and the `files` flags, generating the input once.
bin=${TRIPFLOW:-$(dirname "$0")/../target/release/tripflow}
work=${WORK:-$(mktemp -d "/tmp/tripflow-$(basename "$0" .sh).XXXXXX")}
mkdir -p "$work"
data=$work/data-$trips
if [ ! -f "$data/trip_end.csv" ]; then
  "$bin" gen --trips "$trips" --seed 1 --out "$data" >/dev/null
fi
files=(--start "$data/trip_start.csv" --end "$data/trip_end.csv")

# run_timed NAME COMMAND...: runs COMMAND (stdout to $work/stdout) and sets $wall (s)
# and $rss (KiB), as /usr/bin/time reports them.
run_timed() {
  /usr/bin/time -f '%e %M' -o "$work/time" "${@:2}" >"$work/stdout"
  read -r wall rss <"$work/time"
}
