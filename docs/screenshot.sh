#!/usr/bin/env bash
# Takes docs/report.png, the README's picture of the KPI report: `tripflow run` on the
# repository's data/, then a headless Chromium screenshot of kpi_output/report.html.
# Needs Chromium (`apt-get install chromium`). TRIPFLOW_BIN picks the binary; by
# default the release build (`cargo build --release` first).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${TRIPFLOW_BIN:-${CARGO_TARGET_DIR:-target}/release/tripflow}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$bin" run --home "$tmp/home" --out "$tmp/out" > /dev/null
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/profile" --window-size=1300,2050 --hide-scrollbars \
  --screenshot="$PWD/docs/report.png" "file://$tmp/out/kpi_output/report.html" 2> /dev/null
echo "wrote docs/report.png"
