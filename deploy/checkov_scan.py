"""Runs checkov over the translated template and the workflows, and fails on anything
but a clean, real scan.

checkov says nothing when it cannot read a file: a workflow its schema rejects is
scanned with zero checks and reported as passing. So each scan must have run checks,
with no parsing error and no failed check, and every check it skipped must carry the
reason given in the resource's Metadata (nothing is skipped from the command line).

Usage: checkov_scan.py CHECKOV TRANSLATED.json WORKFLOWS_DIR
"""

import json
import subprocess
import sys


def scan(checkov, framework, *target):
    out = subprocess.run(
        [checkov, *target, "--framework", framework, "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        reports = json.loads(out.stdout)
    except json.JSONDecodeError:
        sys.exit(f"checkov ({framework}) printed no JSON report:\n{out.stdout}{out.stderr}")
    return reports if isinstance(reports, list) else [reports]


def check(name, reports):
    passed = failed = skipped = errors = 0
    problems = []
    for report in reports:
        # A scan that found nothing to read reports only a summary.
        summary = report.get("summary", report)
        passed += summary.get("passed", 0)
        failed += summary.get("failed", 0)
        skipped += summary.get("skipped", 0)
        errors += summary.get("parsing_errors", 0)
        results = report.get("results", {})
        for c in results.get("failed_checks", []):
            problems.append(f"  {c['check_id']} {c['resource']}: {c['check_name']}")
        for c in results.get("skipped_checks", []):
            reason = (c.get("check_result") or {}).get("suppress_comment", "")
            if not reason or reason == "No comment provided":
                problems.append(f"  {c['check_id']} {c['resource']} is skipped without a reason in its Metadata")
    print(f"checkov, {name}: {passed} checks passed, {failed} failed, {skipped} skipped with a reason")
    if passed == 0:
        problems.append("  no check ran: checkov could not read it")
    if errors:
        problems.append(f"  {errors} files checkov could not parse")
    return problems


def main():
    checkov, translated, workflows = sys.argv[1:4]
    problems = check("template", scan(checkov, "cloudformation", "--file", translated))
    problems += check("workflows", scan(checkov, "github_actions", "--directory", workflows))
    if problems:
        sys.exit("checkov found:\n" + "\n".join(problems))


if __name__ == "__main__":
    main()
