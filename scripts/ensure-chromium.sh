#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the browser suites when missing (idempotent).
# Browser builds downloaded by test tools do not work offline; Debian's packages do.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
echo "installing chromium and chromium-driver from Debian"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
