#!/usr/bin/env bash
# Point samples on the North Carolina demo data: the scene is classified
# from a few hundred labelled points instead of a wall-to-wall reference,
# and assessed with a stratified random point sample, as a field campaign
# would do it. The held-out 64 x 64-cell blocks are those of demo/chain.sh.
# 1. POINTS random points are drawn in the training blocks, on cells with
#    data in all six bands, with their landclass96 value (column class,
#    INTEGER) and name (column label) as attributes.
# 2. i.ann.patches cuts one patch centred on each point (training=, under
#    a MASK of the training blocks as in the demo; -n, so that a point near
#    the MASK or a NULL band cell keeps its patch), split=blocks keeps
#    training and validation patches apart; the fcn network is trained as
#    in the demo and classifies the whole scene into landcover_points (and
#    the vector map landcover_points_areas, areas under 1 ha merged).
# 3. The wall-to-wall model of the demo (1500 patches of the whole
#    reference in the training blocks) is trained too, unless WALL is
#    `none` or the path of an existing model bundle (e.g. the demo's).
# 4. Each map is assessed (a) with a sample stratified by its own classes:
#    PER_CLASS random points per map class in the held-out blocks, with
#    their landclass96 value (i.ann.classify -e reference_vector=), and
#    (b) wall-to-wall on all held-out cells (reference=landclass96_heldout).
#    Both under a MASK of the held-out blocks, so that the area-adjusted
#    estimates weight the strata by the map's class areas in the held-out
#    blocks, the population the samples are drawn from.
# Run inside a GRASS session in a project holding the demo data
# (demo/import_nc.sh), with i.ann installed:
#   grass PROJECT/PERMANENT --exec bash examples/points_nc.sh WORK \
#       [POINTS] [PER_CLASS] [EPOCHS] [FILTERS] [WALL] [SEED]
# SEED (default 1, the demo's) seeds the draws of the points, the patches,
# the training and the assessment samples.
set -euo pipefail
work=$1
points=${2:-600}
per_class=${3:-50}
epochs=${4:-12}
filters=${5:-32}
wall=${6:-train}
seed=${7:-1}
bands=lsat7_2000_10,lsat7_2000_20,lsat7_2000_30,lsat7_2000_40,lsat7_2000_50,lsat7_2000_70
mkdir -p "$work"
# No MASK is left behind, whatever happens.
trap 'g.remove -f --quiet type=raster name=MASK 2>/dev/null || true' EXIT

g.region --quiet raster=landclass96
r.mapcalc --overwrite --quiet \
    "heldout_blocks = if((int((row() - 1) / 64) * 7 + int((col() - 1) / 64) * 3) % 4 == 0, 1, null())"
r.mapcalc --overwrite --quiet "training_blocks = if(isnull(heldout_blocks), 1, null())"
r.mapcalc --overwrite --quiet "landclass96_heldout = if(heldout_blocks, landclass96, null())"
r.category --quiet landclass96_heldout raster=landclass96
r.colors --quiet landclass96_heldout raster=landclass96
# Cells with data in all six bands (band 7 has NULL cells where the others
# have data).
r.mapcalc --overwrite --quiet "all_bands = if(isnull(${bands//,/ + }), null(), 1)"

# points_of CELLS NAME: the vector map NAME of points at the non-NULL cells
# of the raster map CELLS, with their landclass96 value (INTEGER column
# class) and category label (column label).
points_of() {
    r.mapcalc --overwrite --quiet "$2 = if(isnull($1), null(), landclass96)"
    r.category --quiet "$2" raster=landclass96
    if g.findfile element=vector file="$2" mapset=. >/dev/null; then
        g.remove -f --quiet type=vector name="$2"
    fi
    r.to.vect --quiet input="$2" output="$2" type=point column=class
}

echo "== 1. $points random training points in the training blocks"
r.mapcalc --overwrite --quiet \
    "point_frame = if(training_blocks && all_bands && !isnull(landclass96), 1, null())"
r.random --overwrite --quiet input=point_frame npoints="$points" raster=point_cells seed="$seed"
points_of point_cells training_points
v.db.select -c training_points columns=label | sort | uniq -c

echo "== 2. Patches centred on the points, training, classification"
r.mask --overwrite --quiet raster=training_blocks
i.ann.patches -n --overwrite input=$bands training=training_points column=class \
    label_column=label output="$work/point_patches" size=32 number="$points" \
    validation=0.2 split=blocks seed="$seed"
r.mask --quiet -r
i.ann.train --overwrite input="$work/point_patches" output="$work/point_model" \
    architecture=fcn filters="$filters" epochs="$epochs" batch_size=32 \
    augmentation=dihedral seed="$seed"
i.ann.classify --overwrite --quiet input=$bands model="$work/point_model" \
    output=landcover_points vector=landcover_points_areas min_area=10000
maps=landcover_points

if [ "$wall" = train ]; then
    echo "== 3. The demo's wall-to-wall model (1500 patches in the training blocks)"
    r.mask --overwrite --quiet raster=training_blocks
    i.ann.patches --overwrite --quiet input=$bands reference=landclass96 \
        output="$work/wall_patches" size=32 number=1500 validation=0.2 seed="$seed"
    r.mask --quiet -r
    i.ann.train --overwrite input="$work/wall_patches" output="$work/wall_model" \
        architecture=fcn filters="$filters" epochs="$epochs" batch_size=32 \
        augmentation=dihedral seed="$seed"
    wall=$work/wall_model
fi
if [ "$wall" != none ]; then
    i.ann.classify --overwrite --quiet input=$bands model="$wall" output=landcover_wall
    maps="$maps landcover_wall"
fi

echo "== 4. Stratified random samples of the held-out blocks, and assessment"
for map in $maps; do
    # PER_CLASS random cells of each class the map has in the held-out blocks.
    r.mapcalc --overwrite --quiet \
        "sample_frame = if(heldout_blocks && !isnull(landclass96), $map, null())"
    strata=
    sampled=
    for class in $(r.stats -n --quiet input=sample_frame); do
        r.mapcalc --overwrite --quiet \
            "stratum_$class = if(sample_frame == $class, 1, null())"
        eval "$(r.univar -g stratum_$class | grep '^n=')"
        take=$(( n < per_class ? n : per_class ))
        r.random --overwrite --quiet input="stratum_$class" npoints="$take" \
            raster="sample_$class" seed=$(( 100 * seed + class ))
        strata="$strata,stratum_$class,sample_$class"
        sampled="$sampled${sampled:+ && }isnull(sample_$class)"
    done
    r.mapcalc --overwrite --quiet "sample_cells = if($sampled, null(), 1)"
    points_of sample_cells "${map}_sample"
    g.remove -f --quiet type=raster name="sample_frame,sample_cells$strata"
    echo "$map: $(v.info -t "${map}_sample" | grep '^points=') in the held-out blocks"
    r.mask --overwrite --quiet raster=heldout_blocks
    i.ann.classify -e --overwrite classified="$map" reference_vector="${map}_sample" \
        column=class report="$work/${map}_sample.json" >/dev/null
    i.ann.classify -e --overwrite classified="$map" reference=landclass96_heldout \
        report="$work/${map}_heldout.json" >/dev/null
    r.mask --quiet -r
done

python3 - "$work" $maps <<'PY'
import json
import sys

work, maps = sys.argv[1], sys.argv[2:]
meta = json.load(open(f"{work}/point_patches/metadata.json"))
counts = meta["counts"]
print(
    "Training points: {} drawn, {} patch centres ({} training, {} validation)".format(
        meta["sampling"]["number_requested"],
        meta["sampling"]["number_obtained"],
        counts["train"]["patches"],
        counts["validation"]["patches"],
    )
)
row = "{:<17} {:<21} {:>6} {:>6} {:>6} {:>8}  {}"
print(row.format("map", "assessed with", "cells", "OA", "kappa", "macro F1", "OA (area-adj.)"))
for name in maps:
    for kind, what in (("sample", "stratified points"), ("heldout", "all held-out cells")):
        r = json.load(open(f"{work}/{name}_{kind}.json"))
        a = r["area_adjusted"]
        print(
            row.format(
                name,
                what,
                r["cells"],
                "{:.3f}".format(r["overall_accuracy"]),
                "{:.3f}".format(r["kappa"]),
                "{:.3f}".format(r["macro_f1"]),
                "{:.3f} +- {:.3f}".format(a["overall_accuracy"], a["overall_accuracy_ci95"]),
            )
        )
PY
