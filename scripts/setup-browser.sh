#!/usr/bin/env bash
# What the page test needs: Debian's chromium (apt) and playwright-core (npm, pinned) under .cache/.
#   scripts/setup-browser.sh        prints the folder holding node_modules/playwright-core
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
version=$(pinned PLAYWRIGHT_CORE_VERSION)
ensure_chromium
dir=.cache/browser-test-$version
if [ ! -d "$dir/node_modules/playwright-core" ]; then
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --silent "playwright-core@$version" >&2
fi
echo "$PWD/$dir"
