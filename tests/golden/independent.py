#!/usr/bin/env python3
"""A second computation of the shipped KPI queries, with no tripflow code in it.

Reads the golden test's inputs (trip_start.csv, trip_end.csv, then extra.ndjson, in that
order) from IN_DIR, merges them by the rules of docs/design.md section 3 (per trip, the start
fields of the newest pickup_datetime and the end fields of the newest dropoff_datetime;
an equal version changes nothing), and writes what each query in queries/ returns as
OUT_DIR/<stem>.ndjson, the way `tripflow sql --format ndjson` writes it (null fields
left out). Money is Python's `decimal`, exact, rounded half away from zero to cents, as
SQL's ROUND; an AVG of DECIMAL(38, 18) has scale 22, so the mean is cut to 22 places
before it is rounded.

Usage: independent.py IN_DIR OUT_DIR
"""

import csv
import json
import sys
from collections import defaultdict
from datetime import datetime, timezone
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, getcontext
from pathlib import Path

getcontext().prec = 120
CENT = Decimal("0.01")
AVG_SCALE = Decimal(1).scaleb(-22)


def instant(text):
    """A datetime of the wire as an aware UTC datetime (no offset means UTC)."""
    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def blank(value):
    return value is None or (isinstance(value, str) and value.strip() == "")


def decimal(value):
    return None if blank(value) else Decimal(str(value).strip())


def events():
    """Every event. The order does not matter: no two events of these inputs share a
    trip, a kind and a version but differ in content."""
    root = Path(sys.argv[1])
    with open(root / "trip_start.csv", newline="") as f:
        for row in csv.DictReader(f):
            yield "start", row
    with open(root / "trip_end.csv", newline="") as f:
        for row in csv.DictReader(f):
            yield "end", row
    with open(root / "extra.ndjson") as f:
        for line in f:
            event = json.loads(line, parse_float=Decimal, parse_int=Decimal)
            yield ("start" if event["event_type"] == "trip_start" else "end"), event


def merged():
    """trip_id -> {"start": fields, "end": fields}, newest version of each group."""
    trips = defaultdict(dict)
    for kind, fields in events():
        version = instant(fields["pickup_datetime" if kind == "start" else "dropoff_datetime"])
        held = trips[fields["trip_id"]].get(kind)
        if held is None or version > held[0]:
            trips[fields["trip_id"]][kind] = (version, fields)
    return trips


def cents(value):
    return (value + 0).quantize(CENT, rounding=ROUND_HALF_UP)


def mean(values):
    exact = sum(values, Decimal(0)) / len(values)
    return cents(exact.quantize(AVG_SCALE, rounding=ROUND_DOWN))


def line(pairs):
    """One NDJSON line, numbers written as their exact text, nulls left out."""
    parts = []
    for key, value in pairs:
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, str) else str(value)
        parts.append(f'"{key}":{text}')
    return "{" + ",".join(parts) + "}\n"


def main():
    out = Path(sys.argv[2])
    completed = []
    for trip in merged().values():
        if "start" in trip and "end" in trip:
            (pickup, start), (dropoff, end) = trip["start"], trip["end"]
            completed.append(
                {
                    "trip_date": dropoff.date().isoformat(),
                    "pickup_hour": pickup.hour,
                    "fare": decimal(end["fare_amount"]),
                    "tip": decimal(end.get("tip_amount")) or Decimal(0),
                    # CAST(payment_type AS DECIMAL(38, 0)): rounded half away from zero.
                    "payment_type": None
                    if blank(end.get("payment_type"))
                    else decimal(end["payment_type"]).quantize(Decimal(1), rounding=ROUND_HALF_UP),
                }
            )

    def groups(key):
        by = defaultdict(list)
        for t in completed:
            by[key(t)].append(t)
        return by

    daily = []
    for date, ts in sorted(groups(lambda t: t["trip_date"]).items()):
        fares = [t["fare"] for t in ts]
        daily.append(
            line(
                [
                    ("trip_date", date),
                    ("total_trips", len(ts)),
                    ("total_fare", cents(sum(fares, Decimal(0)))),
                    ("min_fare", cents(min(fares))),
                    ("max_fare", cents(max(fares))),
                    ("avg_fare", mean(fares)),
                ]
            )
        )

    # ORDER BY trip_date, payment_type NULLS LAST.
    by_payment = groups(lambda t: (t["trip_date"], t["payment_type"]))
    payment = [
        line(
            [
                ("trip_date", date),
                ("payment_type", kind),
                ("trips", len(ts)),
                ("total_fare", cents(sum((t["fare"] for t in ts), Decimal(0)))),
                ("total_tip", cents(sum((t["tip"] for t in ts), Decimal(0)))),
            ]
        )
        for (date, kind), ts in sorted(by_payment.items(), key=lambda kv: (kv[0][0], kv[0][1] is None, kv[0][1] or 0))
    ]

    hourly = [
        line([("trip_date", date), ("pickup_hour", hour), ("trips", len(ts)), ("avg_fare", mean([t["fare"] for t in ts]))])
        for (date, hour), ts in sorted(groups(lambda t: (t["trip_date"], t["pickup_hour"])).items())
    ]

    for stem, lines in [("daily_kpis", daily), ("fares_by_payment_type", payment), ("trips_by_hour", hourly)]:
        (out / f"{stem}.ndjson").write_text("".join(lines))


if __name__ == "__main__":
    main()
