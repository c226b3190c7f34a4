#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine, then run the whole suite.
#   bash tests/run.sh [pytest arguments]
# Without arguments: the whole suite, then tests/server and tests/middleware again on PostgreSQL (--metadata).
# Debian packages: the real clients and servers the end-to-end tests drive. Python packages: into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(python3-venv skopeo umoci podman buildah docker.io nginx apache2-utils docker-registry curl
                 ca-certificates openssl iproute2
                 systemd docker-compose  # systemd-analyze verifies deploy/systemd; docker-compose checks compose.yaml
                 postgresql  # the metadata backend for several nodes: its contract suite and a second WSGI pass
                 chromium chromium-driver  # the web UI's browser tests (tests/e2e/web/); downloads nothing
                 swift swift-proxy swift-account swift-container swift-object python3-swift memcached)  # S3 store
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
    "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,tui,postgresql,s3]'

export PATH="$PWD/.venv/bin:$PATH"
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole suite, then the WSGI-level tests once more with PostgreSQL as the metadata backend (not e2e).
status=0
.venv/bin/python -m pytest || status=$?
.venv/bin/python -m pytest -q tests/server tests/middleware --metadata=postgresql || status=$?
exit $status
