#!/usr/bin/env bash
# `tripflow run` against both Python baselines (benches/python_baseline.py, modes
# original and tuned) on the same generated files, in turn, ROUNDS times, so every ratio
# is measured side by side on one machine.
#
#   python3 -m venv /tmp/baseline && /tmp/baseline/bin/pip install pandas
#   benches/baseline_ratio.sh 1000000 3
#
# Needs a release build (`cargo build --release`). Work files go to $WORK (default: a new
# folder under /tmp). Prints each run's wall time and peak RSS, then the median ratios.
set -euo pipefail
trips=${1:?give the number of trips}
rounds=${2:-3}
here=$(dirname "$0")
python=${PYTHON:-/tmp/baseline/bin/python}
. "$here/common.sh"

# timed NAME COMMAND...: runs it, appends "NAME wall" to $work/times, prints a line.
timed() {
  run_timed "$@"
  echo "$1 $wall" >>"$work/times"
  awk -v n="$1" -v w="$wall" -v r="$rss" 'BEGIN { printf "%-18s %7.1f s, peak %5.0f MiB\n", n, w, r / 1024 }'
}

: >"$work/times"
for _ in $(seq "$rounds"); do
  rm -rf "$work/home" "$work/out"
  timed tripflow "$bin" run --home "$work/home" --out "$work/out" "${files[@]}"
  timed python-original "$python" "$here/python_baseline.py" --mode original "${files[@]}" --work "$work/py"
  timed python-tuned "$python" "$here/python_baseline.py" --mode tuned "${files[@]}" --work "$work/py"
done
python3 - "$work/times" <<'EOF'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    name, wall = line.split()
    times.setdefault(name, []).append(float(wall))
median = {name: statistics.median(walls) for name, walls in times.items()}
for name in ("python-original", "python-tuned"):
    print(f"tripflow is {median[name] / median['tripflow']:.1f}x faster than {name} "
          f"(medians {median['tripflow']:.1f} s against {median[name]:.1f} s)")
EOF
