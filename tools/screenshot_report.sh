#!/usr/bin/env bash
# Look at a report the way a reader does: render <report folder>/report.html in headless Chromium and save a
# full-page screenshot (not run in CI; needs `chromium`, e.g. `apt-get install -y chromium`).
#   bash tools/screenshot_report.sh sweeps_out/fcn_mnist1d_dd/report [out.png] [width]
set -euo pipefail
report=${1:?usage: screenshot_report.sh REPORT_FOLDER [OUT.png] [WIDTH]}
out=${2:-$report/report_screenshot.png}
width=${3:-1400}
html=$(cd "$report" && pwd)/report.html
[ -f "$html" ] || { echo "no report.html in $report (run lipschitz-dd report first)" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "chromium not found (apt-get install -y chromium)" >&2; exit 1; }
# A tall window: the screenshot holds the whole page (every figure and table).
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --screenshot="$(realpath -m "$out")" \
    --window-size="$width,9000" "file://$html" 2>/dev/null
echo "screenshot: $out"
