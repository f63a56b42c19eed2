#!/usr/bin/env bash
# What the caption sidecar test needs: Debian's exiftool (reads the .xmp sidecars back), pinned.
#   scripts/setup-exiftool.sh        installs it when missing or at another version (idempotent)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
version=$(pinned EXIFTOOL_DEB_VERSION)
installed=$(dpkg-query -W -f='${Version}' libimage-exiftool-perl 2>/dev/null || true)
if [ "$installed" != "$version" ] || ! command -v exiftool >/dev/null; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "libimage-exiftool-perl=$version" >&2
fi
