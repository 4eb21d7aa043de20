#!/usr/bin/env python3
"""The original design's approach, done on one machine in Python: the baseline that
`tripflow run` is compared against (README, "Performance").

    produce   each CSV row -> json.dumps, interleaved by event time (the producer script)
    ingest    per record: json.loads, field-by-field validation, one conditional upsert
              into SQLite (the Lambda; a commit per --lambda-batch records, Kinesis'
              default Lambda batch size of 100, with synchronous=FULL)
    --mode tuned  the same code tuned as a careful engineer would for one machine: a
              commit every 10,000 records, synchronous=NORMAL (the records are held in
              memory in both modes: no stream at all)
    kpi       the table read into pandas, per-day trip count and total / min / max / avg
              fare (the Glue job), one kpi.json per date

Run it (pandas is the only dependency):

    python3 -m venv /tmp/baseline && /tmp/baseline/bin/pip install pandas
    /tmp/baseline/bin/python benches/python_baseline.py --start big/trip_start.csv \
        --end big/trip_end.csv --work /tmp/baseline-work

It prints the seconds of each stage and events per second, as `tripflow run` does.
"""

import argparse
import csv
import json
import os
import re
import shutil
import sqlite3
import time
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation, ROUND_HALF_UP

START_REQUIRED = ["trip_id", "pickup_location_id", "dropoff_location_id", "vendor_id", "pickup_datetime"]
END_REQUIRED = ["trip_id", "dropoff_datetime", "fare_amount"]
START_FIELDS = ["pickup_location_id", "dropoff_location_id", "vendor_id", "pickup_datetime",
                "estimated_dropoff_datetime", "estimated_fare_amount"]
END_FIELDS = ["dropoff_datetime", "rate_code", "passenger_count", "trip_distance", "fare_amount",
              "tip_amount", "payment_type", "trip_type"]
ISO = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(:\d{2}(\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?$")


def number(cell):
    try:
        return json.loads(cell) if cell.strip() else None
    except ValueError:
        return cell


def produce(start_path, end_path):
    """CSV rows -> JSON records, ordered by event time (starts first at equal times)."""
    events = []
    for path, kind, time_col in ((start_path, "trip_start", "pickup_datetime"),
                                 (end_path, "trip_end", "dropoff_datetime")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                event = {"event_type": kind}
                for key, cell in row.items():
                    event[key] = cell if key == "trip_id" else number(cell)
                events.append((row[time_col], 0 if kind == "trip_start" else 1, json.dumps(event)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in events]


def utc(text):
    m = ISO.match(str(text).strip())
    if not m:
        raise ValueError("not ISO 8601")
    t = datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{m.group(5) or '+00:00'}".replace("Z", "+00:00"))
    if len(m.group(2)) == 5:
        t = t.replace(second=0)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def validate(event):
    """Field by field, as the Lambda did. Returns (kind, normalised values) or reasons."""
    kind = event.get("event_type")
    kind = {"trip_start": "start", "start": "start", "trip_end": "end", "end": "end"}.get(kind)
    if kind is None:
        kind = "start" if "pickup_datetime" in event else "end"
    reasons, values = [], {}
    fields = START_FIELDS if kind == "start" else END_FIELDS
    required = START_REQUIRED if kind == "start" else END_REQUIRED
    for name in required:
        if event.get(name) in (None, ""):
            reasons.append(f"{name}: missing")
    for name in fields:
        v = event.get(name)
        if v in (None, ""):
            values[name] = None
            continue
        try:
            if name.endswith("_datetime"):
                values[name] = utc(v)
            elif name in ("pickup_location_id", "dropoff_location_id", "vendor_id"):
                d = Decimal(str(v))
                if d != d.to_integral_value():
                    raise ValueError("not an integer")
                values[name] = int(d)
            else:
                d = Decimal(str(v))
                if not d.is_finite():
                    raise ValueError("not finite")
                values[name] = str(d.normalize())
        except (ValueError, InvalidOperation) as e:
            reasons.append(f"{name}: {e}")
    return kind, values, reasons


def ingest(records, db_path, lambda_batch, synchronous):
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA cache_size=-65536")
    cols = ", ".join(f"{c} TEXT" for c in START_FIELDS + END_FIELDS)
    db.execute(f"CREATE TABLE IF NOT EXISTS trips (trip_id TEXT PRIMARY KEY, {cols})")
    upsert = {}
    for kind, fields, version in (("start", START_FIELDS, "pickup_datetime"), ("end", END_FIELDS, "dropoff_datetime")):
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        sets = ", ".join(f"{f} = excluded.{f}" for f in fields)
        upsert[kind] = (f"INSERT INTO trips (trip_id, {names}) VALUES (?, {marks}) "
                        f"ON CONFLICT (trip_id) DO UPDATE SET {sets} "
                        f"WHERE trips.{version} IS NULL OR trips.{version} < excluded.{version}", fields)
    applied = stale = dead = 0
    db.execute("BEGIN")
    for n, raw in enumerate(records, 1):
        try:
            event = json.loads(raw)
            kind, values, reasons = validate(event)
        except ValueError as e:
            kind, values, reasons = None, {}, [f"record: {e}"]
        if reasons:
            dead += 1
        else:
            sql, fields = upsert[kind]
            cur = db.execute(sql, [event["trip_id"]] + [values[f] for f in fields])
            if cur.rowcount:
                applied += 1
            else:
                stale += 1
        if n % lambda_batch == 0:
            db.execute("COMMIT")
            db.execute("BEGIN")
    db.execute("COMMIT")
    db.close()
    return applied, stale, dead


def kpis(db_path, out_dir):
    import pandas as pd
    db = sqlite3.connect(db_path)
    df = pd.read_sql_query(
        "SELECT trip_id, fare_amount, dropoff_datetime FROM trips "
        "WHERE pickup_datetime IS NOT NULL AND dropoff_datetime IS NOT NULL", db)
    db.close()
    df["trip_date"] = df["dropoff_datetime"].str.slice(0, 10)
    df["fare"] = df["fare_amount"].map(Decimal)
    cents = Decimal("0.01")
    days = 0
    for date, group in df.groupby("trip_date"):
        fares = group["fare"]
        total = sum(fares, Decimal(0))
        kpi = {
            "trip_date": date,
            "total_trips": int(len(fares)),
            "total_fare": float(total.quantize(cents, ROUND_HALF_UP)),
            "min_fare": float(min(fares).quantize(cents, ROUND_HALF_UP)),
            "max_fare": float(max(fares).quantize(cents, ROUND_HALF_UP)),
            "avg_fare": float((total / len(fares)).quantize(cents, ROUND_HALF_UP)),
        }
        path = os.path.join(out_dir, "kpi_output", f"date={date}")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "kpi.json"), "w") as f:
            json.dump(kpi, f, indent=2)
        days += 1
    return len(df), days


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", default="data/trip_start.csv")
    p.add_argument("--end", default="data/trip_end.csv")
    p.add_argument("--work", default="/tmp/tripflow-python-baseline")
    p.add_argument("--mode", choices=["original", "tuned"], default="original",
                   help="original: a commit per 100 records, synchronous=FULL; "
                        "tuned: a commit per 10,000 records, synchronous=NORMAL")
    p.add_argument("--lambda-batch", type=int, help="records per commit (overrides the mode's)")
    a = p.parse_args()
    batch, synchronous = {"original": (100, "FULL"), "tuned": (10_000, "NORMAL")}[a.mode]
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    began = time.perf_counter()
    records = produce(a.start, a.end)
    produce_s = time.perf_counter() - began
    t = time.perf_counter()
    applied, stale, dead = ingest(records, os.path.join(a.work, "trips.sqlite"), a.lambda_batch or batch,
                                 synchronous)
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    trips, days = kpis(os.path.join(a.work, "trips.sqlite"), a.work)
    kpi_s = time.perf_counter() - t
    total = time.perf_counter() - began
    n = len(records)
    print(f"read {n} = applied {applied} + duplicate_or_stale {stale} + dead_lettered {dead}")
    print(f"produce {produce_s:.2f} s ({n / produce_s:.0f} events/s), ingest {ingest_s:.2f} s "
          f"({n / ingest_s:.0f} events/s), kpi {kpi_s:.2f} s ({trips} trips, {days} dates)")
    print(f"total {total:.2f} s")


if __name__ == "__main__":
    main()
