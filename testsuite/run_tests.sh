#!/usr/bin/env bash
# `make test`: style checks, then the testsuite with pytest, in real GRASS
# sessions, with the Python of $IANN_VENV (made by .ci/setup) first on PATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source .ci/env.sh
python3 -m black --check --quiet lib i.ann.*/ testsuite demo bench examples
python3 -m flake8 lib i.ann.*/ testsuite demo bench examples
python3 -m pytest -q -p no:cacheprovider testsuite "$@"
