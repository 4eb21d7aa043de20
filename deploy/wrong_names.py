"""Writes a copy of the translated template that names resources of no stack, for the
test that the stack check (stack_on_moto.py) fails on it: a fixed table in a function's
environment, another stack in the missed-run alarm's dimension, another table in the
ingest role's policy. Prints the names it planted, one a line.

Usage: wrong_names.py TRANSLATED.json OUT.json
"""

import json
import sys

t = json.load(open(sys.argv[1]))
r = t["Resources"]
r["IngestFunction"]["Properties"]["Environment"]["Variables"]["TRIPFLOW_STORE"] = "dynamodb://bolt"
for d in r["KpiMissedAlarm"]["Properties"]["Dimensions"]:
    if d["Name"] == "stack":
        d["Value"] = "tripflow"
statements = r["IngestRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
merge = next(s for s in statements if s.get("Sid") == "MergeIntoTheTripTable")
merge["Resource"] = "arn:aws:dynamodb:us-east-1:123456789012:table/another-stack-trips"
json.dump(t, open(sys.argv[2], "w"))
print("dynamodb://bolt\nstack=tripflow\ntable/another-stack-trips")
