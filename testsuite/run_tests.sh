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
#
# Both print as they go, each line marked with its group ([a] or [b]), so
# that a CI run cut off still shows how far each got. A test that runs
# longer than IANN_TEST_TIMEOUT seconds fails with its stack (pytest-timeout),
# and the slowest tests of each group are listed with their times; a group
# still running after IANN_SUITE_TIMEOUT seconds is interrupted (SIGINT:
# pytest reports what ran), before CI's own limit would cut the log.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source .ci/env.sh
started=$SECONDS
python3 -m black --check --quiet lib i.ann.*/ testsuite demo bench examples
python3 -m flake8 lib i.ann.*/ testsuite demo bench examples
echo "style checks: $((SECONDS - started)) s"

first=(testsuite/test_nc_chain.py testsuite/test_examples.py
    testsuite/test_blocks.py testsuite/test_job_scale.py testsuite/test_engines.py
    testsuite/test_gui.py testsuite/test_install.py testsuite/test_accuracy.py)
second=()
for file in testsuite/test_*.py; do
    [[ " ${first[*]} " == *" $file "* ]] || second+=("$file")
done

# Keras writes ~/.keras/keras.json on its first import: once, before the
# two processes could both try.
python3 -c "import keras" >/dev/null 2>&1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
options=(-p no:cacheprovider -o console_output_style=classic -rfE
    --timeout="${IANN_TEST_TIMEOUT:-900}" --durations=15 -v)
run_group() {
    local name=$1
    shift
    local begun=$SECONDS
    local status=0
    timeout -s INT -k 60 "${IANN_SUITE_TIMEOUT:-4800}" \
        python3 -m pytest "${options[@]}" --basetemp="$scratch/$name" "$@" 2>&1 |
        sed -u "s/^/[$name] /" || status=$?
    echo "[$name] group took $((SECONDS - begun)) s"
    return "$status"
}
run_group a "${first[@]}" "$@" &
one=$!
run_group b "${second[@]}" "$@" &
two=$!
status=0
wait "$one" || status=1
wait "$two" || status=1
echo "make test: $((SECONDS - started)) s in all"
exit "$status"
