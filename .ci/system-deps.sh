#!/usr/bin/env bash
# Installs, from Debian's packages, what the optional test parts need, if it is missing.
# Needs root (CI runs as root); elsewhere it says what it would install and carries on.
set -uo pipefail
need=()
command -v Rscript >/dev/null 2>&1 && Rscript -e 'suppressMessages({library(lmerTest); library(jsonlite)})' >/dev/null 2>&1 \
  || need+=(r-base-core r-cran-lme4 r-cran-lmertest r-cran-jsonlite)
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: not root; the tests that need ${need[*]} will skip (apt-get install -y ${need[*]})" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "system-deps: could not install ${need[*]}; the tests that need them will skip" >&2
exit 0
