#!/usr/bin/env bash
# Transfer walkthrough on the North Carolina demo data. A network trained on
# the west half of the scene is used on the east half as if the east had
# been imaged by another sensor: its bands are rescaled with other gains and
# offsets and rounded to integers (other calibration, other bit depth). The
# east is classified (1) with the west model as it is, (2) with the bands
# standardised on the new image (i.ann.classify -n), and (3) after
# fine-tuning the west model with a small labelled sample of the new image
# (a quarter as many patches, from the east's blocks outside the held-out
# ones, i.ann.train pretrained= -n). All three maps are assessed on the same
# cells: the held-out 64 x 64-cell blocks of the east half.
# Run inside a GRASS session in a project holding the demo data
# (demo/import_nc.sh), with i.ann installed:
#   grass PROJECT/PERMANENT --exec bash examples/transfer_nc.sh WORK [EPOCHS] [NUMBER] [FILTERS]
set -euo pipefail
work=$1
epochs=${2:-12}
number=${3:-1500}
filters=${4:-32}
bands=lsat7_2000_10,lsat7_2000_20,lsat7_2000_30,lsat7_2000_40,lsat7_2000_50,lsat7_2000_70
other=other_10,other_20,other_30,other_40,other_50,other_70
mkdir -p "$work"

g.region --quiet raster=landclass96
eval "$(g.region -g)"
# The middle column, on a cell edge.
middle=$(awk "BEGIN {print $w + int($cols / 2) * $ewres}")
held_out="(int((row() - 1) / 64) * 7 + int((col() - 1) / 64) * 3) % 4 == 0"
r.mapcalc --overwrite --quiet "east_test = if(x() > $middle && $held_out, landclass96, null())"
r.category --quiet east_test raster=landclass96
r.mapcalc --overwrite --quiet "east_tuning_area = if(x() > $middle && !($held_out), 1, null())"
# "Another sensor": per-band gains and offsets, integer values.
set -- 10 2.5 -40 20 2.0 -10 30 3.0 -60 40 1.5 20 50 2.2 -30 70 2.8 -15
while [ $# -gt 0 ]; do
    r.mapcalc --overwrite --quiet "other_$1 = round(lsat7_2000_$1 * $2 + $3)"
    shift 3
done

echo "== 1. Train on the west half"
g.region --quiet raster=landclass96 e=$middle
i.ann.patches --overwrite --quiet input=$bands reference=landclass96 \
    output="$work/west_patches" size=32 number=$number
i.ann.train --overwrite input="$work/west_patches" output="$work/west_model" \
    filters=$filters epochs=$epochs

g.region --quiet raster=landclass96 w=$middle
echo "== 2. Classify the other image of the east with the west model as it is"
i.ann.classify --overwrite --quiet input=$other model="$work/west_model" \
    output=east_as_is reference=east_test report="$work/east_as_is.json" >/dev/null
echo "== 3. The same, bands standardised on the new image (-n)"
i.ann.classify -n --overwrite --quiet input=$other model="$work/west_model" \
    output=east_image_norm reference=east_test report="$work/east_image_norm.json" >/dev/null

echo "== 4. Fine-tune with a small labelled sample of the new image"
r.mask --overwrite --quiet raster=east_tuning_area
i.ann.patches --overwrite --quiet input=$other reference=landclass96 \
    output="$work/east_patches" size=32 number=$(( number / 4 ))
r.mask --quiet -r
i.ann.train -n --overwrite input="$work/east_patches" output="$work/east_model" \
    pretrained="$work/west_model" epochs=$epochs
i.ann.classify --overwrite --quiet input=$other model="$work/east_model" \
    output=east_tuned reference=east_test report="$work/east_tuned.json" >/dev/null

python3 - "$work" <<'PY'
import json, sys
runs = ("east_as_is", "east_image_norm", "east_tuned")
reports = [json.load(open(f"{sys.argv[1]}/{name}.json")) for name in runs]
print("{:<18} {:>6} {:>6} {:>9}".format("east half", "OA", "kappa", "macro F1"))
for name, r in zip(("west model", "with -n", "fine-tuned"), reports):
    print("{:<18} {:>6.3f} {:>6.3f} {:>9.3f}".format(
        name, r["overall_accuracy"], r["kappa"], r["macro_f1"]))
PY
