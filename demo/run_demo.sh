#!/usr/bin/env bash
# `make demo`: the whole i.ann chain on the North Carolina Landsat 7 scene.
# Gets the data (checksums in demo/SHA256SUMS), creates a GRASS project in
# EPSG:3358 under $IANN_DEMO_WORK (default ~/i.ann-demo), installs the
# addon with g.extension into its addons/ folder and runs patches, train,
# classify and the report.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${IANN_DEMO_WORK:-$HOME/i.ann-demo}
data=$repo/demo/data
source "$repo/.ci/env.sh"
export GRASS_ADDON_BASE="$work/addons"

start=$(date +%s)
python3 "$repo/demo/get_data.py" "$data"
rm -rf "$work/grassdata"
mkdir -p "$work/grassdata"
grass -c EPSG:3358 -e "$work/grassdata/nc_landsat"
grass "$work/grassdata/nc_landsat/PERMANENT" --exec bash "$repo/demo/chain.sh" "$repo" "$data" "$work"
echo "== Report written to $work/report.json; demo took $(( $(date +%s) - start )) s"
