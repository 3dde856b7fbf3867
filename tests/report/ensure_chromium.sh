#!/bin/sh
# Install Debian's chromium for the report's browser test when it is missing.
# Prints the browser's path; exits non-zero when it cannot be installed.
set -e
for b in chromium chromium-browser; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; exit 0; fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium missing and apt-get unusable (need root on Debian)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq chromium >&2
command -v chromium
