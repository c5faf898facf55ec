#!/usr/bin/env bash
# The labelling loop on the North Carolina demo data: train from a first
# set of labelled points, let i.ann.sample propose where to label next,
# label, append, retrain; each round's map is assessed on the held-out
# 64 x 64-cell blocks of demo/chain.sh, which neither training nor the
# proposals ever see.
# 1. FIRST random points in the training blocks (cells with data in all six
#    bands and a landclass96 class), labelled from landclass96.
# 2. Each round: patches on all points labelled so far (training=points_0,
#    points_1, ...), a network trained with the same number of steps
#    whatever the number of points (EPOCH_PATCHES patch-epochs): from
#    scratch in the first round, then fine-tuned from the previous round's
#    network with half the epochs (as accurate, half the CPU time), the
#    scene classified with its uncertainty and assessed on the held-out
#    blocks; then i.ann.sample proposes BATCH points in the training blocks
#    (under a MASK), and v.what.rast labels them from landclass96, standing
#    in for the person at the digitizer.
# 3. A last training on all the points, assessed the same way.
# Run inside a GRASS session in a project holding the demo data
# (demo/import_nc.sh), with i.ann installed:
#   grass PROJECT/PERMANENT --exec bash examples/active_nc.sh WORK \
#       [FIRST] [BATCH] [ROUNDS] [FILTERS] [EPOCH_PATCHES] [SEED]
set -euo pipefail
work=$1
first=${2:-150}
batch=${3:-150}
rounds=${4:-3}
filters=${5:-16}
epoch_patches=${6:-14400}
seed=${7:-1}
bands=lsat7_2000_10,lsat7_2000_20,lsat7_2000_30,lsat7_2000_40,lsat7_2000_50,lsat7_2000_70
mkdir -p "$work"
# No MASK is left behind, whatever happens.
trap 'g.remove -f --quiet type=raster name=MASK 2>/dev/null || true' EXIT

g.region --quiet raster=landclass96
r.mapcalc --overwrite --quiet \
    "training_blocks = if((int((row() - 1) / 64) * 7 + int((col() - 1) / 64) * 3) % 4 == 0, null(), 1)"
r.mapcalc --overwrite --quiet "landclass96_heldout = if(isnull(training_blocks), landclass96, null())"
r.category --quiet landclass96_heldout raster=landclass96
r.mapcalc --overwrite --quiet \
    "point_frame = if(training_blocks && !isnull(landclass96) && !isnull(${bands//,/ + }), 1, null())"

echo "== 1. $first random points in the training blocks, labelled"
r.random --overwrite --quiet input=point_frame npoints="$first" vector=points_0 seed="$seed"
v.db.addcolumn --quiet map=points_0 columns="class integer"
v.what.rast --quiet map=points_0 raster=landclass96 column=class
training=points_0
labelled=$first

# train_and_map ROUND: patches of the points labelled so far, a network, the
# scene's map and uncertainty (landcover_ROUND, uncertainty_ROUND), assessed.
train_and_map() {
    local round=$1
    r.mask --overwrite --quiet raster=training_blocks
    i.ann.patches -n --overwrite --quiet input=$bands training="$training" column=class \
        output="$work/patches_$round" size=32 number="$labelled" validation=0.2 \
        split=blocks seed="$seed"
    r.mask --quiet -r
    local epochs=$(( (epoch_patches + labelled - 1) / labelled ))
    local previous=()
    if [ "$round" -gt 1 ]; then
        previous=(pretrained="$work/model_$(( round - 1 ))")
        epochs=$(( (epochs + 1) / 2 ))
    fi
    i.ann.train --overwrite --quiet input="$work/patches_$round" \
        output="$work/model_$round" architecture=fcn filters="$filters" \
        epochs="$epochs" batch_size=32 augmentation=dihedral seed="$seed" \
        "${previous[@]}"
    i.ann.classify --overwrite --quiet input=$bands model="$work/model_$round" \
        output="landcover_$round" uncertainty="uncertainty_$round" \
        reference=landclass96_heldout report="$work/report_$round.json" >/dev/null
    python3 -c "import json, sys; r = json.load(open(sys.argv[1])); \
print('round {}: {} points, kappa {:.3f}, macro F1 {:.3f}'.format(sys.argv[2], \
sys.argv[3], r['kappa'], r['macro_f1']))" "$work/report_$round.json" "$round" "$labelled"
}

echo "== 2. $rounds rounds of $batch proposed points"
for round in $(seq 1 "$rounds"); do
    train_and_map "$round"
    r.mask --overwrite --quiet raster=point_frame
    i.ann.sample --overwrite --quiet classified="landcover_$round" \
        uncertainty="uncertainty_$round" training="$training" npoints="$batch" \
        output="points_$round" seed="$seed"
    r.mask --quiet -r
    # The person's part: fill the class column of points_$round.
    v.what.rast --quiet map="points_$round" raster=landclass96 column=class
    training=$training,points_$round
    labelled=$(( labelled + batch ))
done

echo "== 3. The last network, on all $labelled points"
train_and_map $(( rounds + 1 ))
