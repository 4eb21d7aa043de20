#!/usr/bin/env python3
"""The whole job, side by side: `tripflow run` against the same job done in batch by the
DuckDB CLI, on the same CSV files, whole process against whole process (issue 31, and
docs/performance.md, "Against DuckDB's batch job").

DuckDB's job, in one file-backed database:
- bulk-loads trip_start.csv and trip_end.csv (read_csv, all text, cast to the table's
  types: fares and codes DOUBLE by default, --money for tripflow's exact DECIMAL(38, 18));
- merges the starts and then the ends into a table keyed by trip_id, newer wins:
  `INSERT ... ON CONFLICT (trip_id) DO UPDATE SET ... WHERE` the stored version is
  older (or absent);
- writes the daily KPI query (queries/daily_kpis.sql's figures) as JSON.

It is a floor, not a peer: no stream, no per-event validation, no durable commit per
batch, and by default money in binary floating point. tripflow does all three. The runs alternate (tripflow, DuckDB, tripflow, ...),
each in a new folder, after one warm-up run of each; the script reports each side's
median wall time and peak RSS (of the process, from wait4) and the ratio of wall times
pair by pair. It checks first that both give the same trips and total fare per day.

    python3 -m venv /tmp/duck && /tmp/duck/bin/pip install duckdb-cli
    tripflow gen --trips 1000000 --seed 1 --out /tmp/m1
    python3 benches/duckdb_batch.py --data /tmp/m1 --duckdb /tmp/duck/bin/duckdb \
        --tripflow target/release/tripflow --runs 4
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

START = ["pickup_location_id", "dropoff_location_id", "vendor_id"]
START_REST = ["pickup_datetime", "estimated_dropoff_datetime", "estimated_fare_amount"]
END = ["dropoff_datetime", "rate_code", "passenger_count", "trip_distance", "fare_amount", "tip_amount",
       "payment_type", "trip_type"]
# The type of the decimal columns (--money): DOUBLE, DuckDB's fastest, by default.
DECIMAL = "DOUBLE"


def cast(column):
    """The column's text as tripflow reads it: integers from integral decimals, blanks null."""
    text = f"NULLIF(trim({column}), '')"
    if column in START:
        return f"CAST(CAST({text} AS DOUBLE) AS BIGINT)"
    if column.endswith("datetime"):
        return f"CAST({text} AS TIMESTAMP)"
    return f"CAST({text} AS {DECIMAL})"


def merge(csv, columns, version):
    names = ", ".join(columns)
    values = ", ".join(cast(c) for c in columns)
    sets = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return (
        f"INSERT INTO trips (trip_id, {names})\n"
        f"SELECT trip_id, {values} FROM read_csv('{csv}', header = true, all_varchar = true)\n"
        f"ON CONFLICT (trip_id) DO UPDATE SET {sets}\n"
        f"WHERE trips.{version} IS NULL OR excluded.{version} > trips.{version};\n"
    )


def duckdb_job(data, out):
    columns = ",\n  ".join(
        [f"{c} BIGINT" for c in START]
        + [f"{c} TIMESTAMP" if c.endswith("datetime") else f"{c} {DECIMAL}" for c in START_REST + END]
    )
    money = lambda f: f"CAST(ROUND({f}, 2) AS DECIMAL(38, 2))"  # noqa: E731
    return (
        f"CREATE TABLE trips (\n  trip_id VARCHAR PRIMARY KEY,\n  {columns}\n);\n"
        + merge(data / "trip_start.csv", START + START_REST, "pickup_datetime")
        + merge(data / "trip_end.csv", END, "dropoff_datetime")
        + "COPY (\n"
        "  SELECT CAST(dropoff_datetime AS DATE) AS trip_date, COUNT(*) AS total_trips,\n"
        f"    {money('SUM(fare_amount)')} AS total_fare, {money('MIN(fare_amount)')} AS min_fare,\n"
        f"    {money('MAX(fare_amount)')} AS max_fare, {money('AVG(fare_amount)')} AS avg_fare\n"
        "  FROM trips WHERE pickup_datetime IS NOT NULL AND dropoff_datetime IS NOT NULL\n"
        "  GROUP BY 1 ORDER BY 1\n"
        f") TO '{out}/kpis.json' (FORMAT JSON);\n"
    )


def run(cmd, stdin=None):
    """Runs `cmd` to its end; returns (wall seconds, peak RSS in MiB)."""
    began = time.perf_counter()
    with open(stdin or os.devnull, "rb") as given:
        child = subprocess.Popen(cmd, stdin=given, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {child.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def tripflow_side(args, work):
    cmd = [args.tripflow, "run", "-q", "--home", str(work / "home"), "--out", str(work / "out"),
           "--start", str(args.data / "trip_start.csv"), "--end", str(args.data / "trip_end.csv")]
    return run(cmd)


def duckdb_side(args, work):
    job = work / "job.sql"
    job.write_text(duckdb_job(args.data, work))
    return run([args.duckdb, str(work / "trips.duckdb")], stdin=job)


def daily(tripflow_out, duckdb_out):
    """Both sides' (date, trips, total fare), which must agree."""
    ours = []
    for f in sorted(Path(tripflow_out, "kpi_output").glob("date=*/kpi.json")):
        k = json.loads(f.read_text())
        ours.append((k["trip_date"], k["total_trips"], f"{float(k['total_fare']):.2f}"))
    theirs = []
    for line in Path(duckdb_out, "kpis.json").read_text().splitlines():
        k = json.loads(line)
        theirs.append((k["trip_date"], k["total_trips"], f"{float(k['total_fare']):.2f}"))
    return ours, theirs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with trip_start.csv and trip_end.csv")
    p.add_argument("--duckdb", required=True, help="the DuckDB CLI")
    p.add_argument("--tripflow", required=True, help="a release build of tripflow")
    p.add_argument("--runs", type=int, default=4, help="counted runs of each, after one warm-up each")
    p.add_argument("--money", default="DOUBLE",
                   help="DuckDB's type for fares and codes: DOUBLE (its fastest, the floor), or tripflow's exact "
                        "'DECIMAL(38, 18)', which DuckDB keeps in 128 bits and takes about 4x as long over")
    args = p.parse_args()
    global DECIMAL
    DECIMAL = args.money
    args.data = args.data.resolve()

    sides = {"tripflow": tripflow_side, "duckdb": duckdb_side}
    times = {name: [] for name in sides}
    for i in range(args.runs + 1):
        for name, side in sides.items():
            work = Path(tempfile.mkdtemp(prefix=f"duckdb-batch-{name}-"))
            try:
                measured = side(args, work)
                if i == 0 and name == "tripflow":
                    kept = Path(tempfile.mkdtemp(prefix="duckdb-batch-check-"))
                    shutil.copytree(work / "out", kept / "out")
                elif i == 0:
                    ours, theirs = daily(kept / "out", work)
                    shutil.rmtree(kept)
                    if ours != theirs:
                        raise SystemExit(f"the two jobs disagree:\n tripflow {ours}\n duckdb   {theirs}")
                    print(f"both give {len(ours)} days, {sum(t for _, t, _ in ours)} completed trips")
                if i > 0:
                    times[name].append(measured)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    for name, runs in times.items():
        walls = sorted(w for w, _ in runs)
        rss = sorted(r for _, r in runs)
        print(f"{name:9} wall {statistics.median(walls):6.2f} s ({walls[0]:.2f}-{walls[-1]:.2f}), "
              f"peak RSS {statistics.median(rss):6.0f} MiB ({rss[0]:.0f}-{rss[-1]:.0f})")
    ratios = sorted(a[0] / b[0] for a, b in zip(times["tripflow"], times["duckdb"]))
    print(f"tripflow / duckdb wall, pair by pair: median {statistics.median(ratios):.2f} "
          f"({ratios[0]:.2f}-{ratios[-1]:.2f}), {len(ratios)} pairs")


if __name__ == "__main__":
    main()
