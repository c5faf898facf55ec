#!/usr/bin/env bash
# `make test`: style checks, then the testsuite with pytest, in real GRASS
# sessions, with the Python of $IANN_VENV (made by .ci/setup) first on PATH.
#
# The suite runs as two pytest processes side by side, one per core: most
# of a test's time is one process starting a module (a Python and a Keras
# import, a GRASS module), which keeps one core busy, so that one pytest
# alone left the second core idle. Each process has its own GRASS project
# and temporary folder; the tests that read the North Carolina data are in
# one group, so it is fetched once. Extra arguments go to both.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source .ci/env.sh
python3 -m black --check --quiet lib i.ann.*/ testsuite demo bench examples
python3 -m flake8 lib i.ann.*/ testsuite demo bench examples

first=(testsuite/test_nc_chain.py testsuite/test_examples.py
    testsuite/test_blocks.py testsuite/test_engines.py testsuite/test_gui.py
    testsuite/test_install.py testsuite/test_accuracy.py)
second=()
for file in testsuite/test_*.py; do
    [[ " ${first[*]} " == *" $file "* ]] || second+=("$file")
done

# Keras writes ~/.keras/keras.json on its first import: once, before the
# two processes could both try.
python3 -c "import keras" >/dev/null 2>&1
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
python3 -m pytest -q -p no:cacheprovider --basetemp="$logs/a" "${first[@]}" "$@" \
    >"$logs/first.log" 2>&1 &
one=$!
python3 -m pytest -q -p no:cacheprovider --basetemp="$logs/b" "${second[@]}" "$@" \
    >"$logs/second.log" 2>&1 &
two=$!
status=0
wait "$one" || status=1
wait "$two" || status=1
echo "== ${first[*]}"
cat "$logs/first.log"
echo "== ${second[*]}"
cat "$logs/second.log"
exit "$status"
