#!/usr/bin/env bash
# Opens a qbench HTML report in headless Chromium and checks that it renders: every chart laid out
# (the page's own check sets <body data-rendered="ok:N">) and no console message at all (errors, CSP
# violations, uncaught exceptions). Keeps the DOM, the Chromium log and a full-page screenshot.
#   scripts/html_check.sh REPORT.html OUT_DIR
# Exit: 0 ok, 1 check failed, 2 usage, 77 Chromium not installed (tests skip on 77).
set -uo pipefail
if [[ $# -ne 2 ]]; then echo "usage: $0 REPORT.html OUT_DIR" >&2; exit 2; fi
html=$(realpath "$1"); out=$2
mkdir -p "$out"
chrome=""
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null 2>&1; then chrome=$(command -v "$c"); break; fi
done
if [[ -z $chrome ]]; then echo "chromium not found (Debian: apt-get install chromium)"; exit 77; fi
profile=$(mktemp -d "${TMPDIR:-/tmp}/qbench-chromium-XXXXXX")
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --disable-extensions --user-data-dir="$profile"
       --enable-logging=stderr --v=0 --virtual-time-budget=5000)
timeout 120 "$chrome" "${flags[@]}" --dump-dom "file://$html" > "$out/dom.html" 2> "$out/chromium.log"
rc=$?
timeout 120 "$chrome" "${flags[@]}" --window-size=1280,5000 --hide-scrollbars --screenshot="$out/screenshot.png" \
  "file://$html" > /dev/null 2>> "$out/screenshot.log"
fail=0
if [[ $rc -ne 0 ]]; then echo "chromium --dump-dom exited with $rc"; fail=1; fi
if ! grep -q 'data-rendered="ok:' "$out/dom.html"; then
  echo "page check failed: $(grep -o 'data-rendered="[^"]*"' "$out/dom.html" || echo 'no data-rendered attribute (script did not run)')"
  fail=1
fi
if grep -q 'CONSOLE' "$out/chromium.log"; then
  echo "console messages:"; grep 'CONSOLE' "$out/chromium.log"
  fail=1
fi
if [[ ! -s $out/screenshot.png ]]; then echo "no screenshot written"; fail=1; fi
[[ $fail -eq 0 ]] && echo "ok: $(grep -o 'data-rendered="[^"]*"' "$out/dom.html"), screenshot $out/screenshot.png"
exit $fail
