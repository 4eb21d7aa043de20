#!/usr/bin/env python3
"""The daily KPI query over a Parquet snapshot: `tripflow sql` against the DuckDB CLI,
whole process against whole process, on the same files (README, "Performance").

Both run queries/daily_kpis.sql as it stands (per trip_date over completed trips:
count, total / min / max / average fare), DuckDB with `FROM trips` pointed at
`snapshots/trip_date=*/trips.parquet`, both print CSV,
and are timed from process start to exit. The script checks that both print the same
figures, then reports the median of --runs runs each (after one warm-up run, so both
read the files from the page cache).

    python3 -m venv /tmp/duck && /tmp/duck/bin/pip install duckdb-cli
    tripflow kpi --all --parquet --home DATA --out SNAP
    python3 benches/duckdb_compare.py --snapshots SNAP --duckdb /tmp/duck/bin/duckdb \
        --tripflow target/release/tripflow
"""

import argparse
import csv
import io
import statistics
import subprocess
import time
from pathlib import Path

QUERY = Path(__file__).resolve().parent.parent / "queries" / "daily_kpis.sql"


def timed(cmd):
    began = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - began, out


def rows(out):
    return [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(out)) if row]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snapshots", required=True, help="the --out folder of a 'tripflow kpi --parquet' run")
    p.add_argument("--duckdb", default="duckdb")
    p.add_argument("--tripflow", default="tripflow")
    p.add_argument("--runs", type=int, default=10)
    a = p.parse_args()

    sql = QUERY.read_text()
    if sql.count("FROM trips") != 1:
        raise SystemExit(f"{QUERY} should read FROM trips once")
    files = f"{a.snapshots}/snapshots/trip_date=*/trips.parquet"
    duck_sql = sql.replace("FROM trips", f"FROM read_parquet('{files}', hive_partitioning = true)")
    commands = {
        "tripflow sql": [a.tripflow, "sql", "--snapshots", a.snapshots, "--format", "csv", "--", sql],
        "duckdb": [a.duckdb, "-csv", "-c", duck_sql],
    }
    outputs = {name: rows(timed(cmd)[1]) for name, cmd in commands.items()}
    ours, theirs = outputs["tripflow sql"], outputs["duckdb"]
    if ours[1:] != theirs[1:]:
        raise SystemExit(f"the two disagree:\ntripflow: {ours}\nduckdb:   {theirs}")
    print(f"{len(ours) - 1} dates, same figures from both")
    medians = {}
    for name, cmd in commands.items():
        seconds = [timed(cmd)[0] for _ in range(a.runs)]
        medians[name] = statistics.median(seconds)
        print(f"{name:13} median {medians[name]:.3f} s  (min {min(seconds):.3f}, max {max(seconds):.3f}, {a.runs} runs)")
    print(f"tripflow / duckdb: {medians['tripflow sql'] / medians['duckdb']:.2f}x")


if __name__ == "__main__":
    main()
