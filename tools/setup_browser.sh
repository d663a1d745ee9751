#!/bin/sh
# Make sure a headless Chromium is on PATH for tests/test_viewer_browser.py (Debian's `chromium` package).
# Idempotent and quiet: does nothing when chromium is already installed; otherwise installs it with apt-get
# (needs root and a reachable Debian mirror). Exits non-zero with a message when it cannot.
set -u

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser: chromium is not installed and apt-get is missing; install Chromium by hand" \
         "(the browser test skips without it)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "setup_browser: chromium is not installed; run 'sudo apt-get install chromium'" \
         "(the browser test skips without it)" >&2
    exit 1
fi

log=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run instead of failing on its lock.
if apt-get -q -o DPkg::Lock::Timeout=300 update >"$log" 2>&1 \
   && apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends chromium >>"$log" 2>&1 \
   && command -v chromium >/dev/null 2>&1; then
    rm -f "$log"
    exit 0
fi
echo "setup_browser: installing chromium with apt-get failed; last lines of its output:" >&2
tail -n 15 "$log" >&2
rm -f "$log"
exit 1
