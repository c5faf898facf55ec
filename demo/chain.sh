#!/usr/bin/env bash
# The demo chain, run inside a GRASS session by demo/run_demo.sh:
# install i.ann with g.extension, import the data, cut patches in the west
# three quarters of the scene, train the fcn network, classify the east
# quarter (never seen in training) and report its accuracy against
# landclass96. Usage: chain.sh REPO DATA_DIR WORK_DIR
set -euo pipefail
repo=$1
data=$2
work=$3
bands=lsat7_2000_10,lsat7_2000_20,lsat7_2000_30,lsat7_2000_40,lsat7_2000_50,lsat7_2000_70

echo "== Installing i.ann with g.extension"
mkdir -p "$GRASS_ADDON_BASE"
# g.extension 8.2 fetches addon metadata from the web after installing a
# multi-module addon; an empty local index lets it finish offline.
[ -f "$GRASS_ADDON_BASE/addons_paths.json" ] || echo '{"tree": []}' > "$GRASS_ADDON_BASE/addons_paths.json"
g.extension extension=i.ann url="$repo" 2>&1 | grep -v "No metadata available" || true
i.ann.train --help >/dev/null 2>&1 || { echo "i.ann did not install" >&2; exit 1; }

echo "== Importing the North Carolina Landsat 7 scene"
bash "$repo/demo/import_nc.sh" "$data"

echo "== Splitting the scene: west 3/4 for training, east 1/4 for testing"
eval "$(g.region -g)"
split=$(python3 -c "print($w + round($cols * 0.75) * $ewres)")
g.region --quiet raster=lsat7_2000_10 e="$split" save=train_area --overwrite
g.region --quiet raster=lsat7_2000_10 w="$split" save=test_area --overwrite

echo "== i.ann.patches"
g.region region=train_area
i.ann.patches --overwrite input="$bands" reference=landclass96 \
    output="$work/patches" size=32 number=1500 validation=0.2 seed=1

echo "== i.ann.train"
i.ann.train --overwrite input="$work/patches" output="$work/model" \
    architecture=fcn filters=32 epochs=12 batch_size=32 seed=1

echo "== i.ann.classify with an accuracy report on the test area"
g.region region=test_area
i.ann.classify --overwrite input="$bands" model="$work/model" \
    output=landcover_fcn reference=landclass96 report="$work/report.json"
r.category landcover_fcn
