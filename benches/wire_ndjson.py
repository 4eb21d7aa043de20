"""Turns a trip_start.csv / trip_end.csv pair into wire records (NDJSON), in event-time
order, for `tripflow produce --ndjson`: with `extra`, every end carries two undeclared
fields (`surge_multiplier`, `app_version`); with `plain`, none. Measures what keeping
undeclared fields costs ingest (docs/performance.md#undeclared-fields).

    python3 benches/wire_ndjson.py big plain.ndjson plain
    python3 benches/wire_ndjson.py big extra.ndjson extra
"""
import csv, json, sys

src, out, extra = sys.argv[1], sys.argv[2], sys.argv[3] == "extra"
events = []
with open(f"{src}/trip_start.csv", newline="") as f:
    for r in csv.DictReader(f):
        parts = ['"event_type":"trip_start"', f'"trip_id":{json.dumps(r["trip_id"])}']
        for k in ["pickup_location_id", "dropoff_location_id", "vendor_id"]:
            parts.append(f'"{k}":{r[k]}' if r[k] else f'"{k}":null')
        for k in ["pickup_datetime", "estimated_dropoff_datetime"]:
            parts.append(f'"{k}":{json.dumps(r[k])}')
        if r["estimated_fare_amount"]:
            parts.append(f'"estimated_fare_amount":{r["estimated_fare_amount"]}')
        events.append((r["pickup_datetime"], "{" + ",".join(parts) + "}"))
with open(f"{src}/trip_end.csv", newline="") as f:
    for r in csv.DictReader(f):
        parts = ['"event_type":"trip_end"', f'"trip_id":{json.dumps(r["trip_id"])}',
                 f'"dropoff_datetime":{json.dumps(r["dropoff_datetime"])}']
        for k in ["rate_code", "passenger_count", "trip_distance", "fare_amount", "tip_amount", "payment_type", "trip_type"]:
            if r[k]:
                parts.append(f'"{k}":{r[k]}')
        if extra:
            parts.append('"surge_multiplier":1.25')
            parts.append('"app_version":"4.2.0"')
        events.append((r["dropoff_datetime"], "{" + ",".join(parts) + "}"))
events.sort(key=lambda e: e[0])
with open(out, "w") as f:
    for _, line in events:
        f.write(line + "\n")
