#!/usr/bin/env bash
# What the page test needs: Debian's chromium (apt) and playwright-core (npm, pinned) under .cache/.
#   scripts/setup-browser.sh        prints the folder holding node_modules/playwright-core
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.65.1
if ! command -v chromium >/dev/null; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
fi
dir=.cache/browser-test-$version
if [ ! -d "$dir/node_modules/playwright-core" ]; then
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --silent "playwright-core@$version" >&2
fi
echo "$PWD/$dir"
