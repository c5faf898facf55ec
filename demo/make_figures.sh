#!/usr/bin/env bash
# The pictures of the suite's manual page (i.ann.html), drawn from the
# demo's results with GRASS's own display modules (cairo driver, rendered
# straight into PNG files). Run inside the demo's GRASS project after the
# demo chain (demo/chain.sh, `make demo`), e.g.
#   grass ~/i.ann-demo/grassdata/nc_landsat/PERMANENT --exec \
#       bash demo/make_figures.sh ~/i.ann-demo OUTDIR
# It writes into OUTDIR (the checkout's root for the manual page):
#   i_ann_classes.png      reference landclass96, the random forest's map
#                          landcover_rf and i.ann's map landcover_fcn
#   i_ann_probability.png  probability of forest, prob_5
#   i_ann_uncertainty.png  the uncertainty map
#   i_ann_confusion.png    copy of WORK/confusion.png (i.ann.classify plot=)
#   i_ann_curves.png       copy of WORK/curves.png (i.ann.train plot=)
# Usage: make_figures.sh WORK_DIR OUTDIR
set -euo pipefail
work=$1
out=$2
mkdir -p "$out"

for map in landclass96 landcover_fcn landcover_rf heldout_blocks prob_5 uncertainty; do
    if [ -z "$(g.list type=raster pattern="$map" mapset=.)" ]; then
        echo "Raster map <$map> not found: run the demo chain first" >&2
        exit 1
    fi
done
for file in "$work/confusion.png" "$work/curves.png" "$work/report.json" \
    "$work/report_rf.json"; do
    [ -f "$file" ] || { echo "$file not found: run the demo chain first" >&2; exit 1; }
done

# Draw on the scene's region without changing the mapset's region.
region=i_ann_figures_$$
text_region=i_ann_figures_text_$$
assessed=i_ann_figures_assessed_$$
g.region --quiet raster=landclass96 save="$region"
export WIND_OVERRIDE=$region
cleanup() {
    unset WIND_OVERRIDE
    g.remove -f --quiet type=region name="$region,$text_region" || true
    g.remove -f --quiet type=raster,vector name="$assessed" || true
}
trap cleanup EXIT

# Immediate rendering with the cairo driver into one PNG per picture: every
# d.* command adds to the file (FILE_READ), on a white background.
export GRASS_RENDER_IMMEDIATE=cairo
export GRASS_RENDER_TRANSPARENT=FALSE
export GRASS_RENDER_BACKGROUNDCOLOR=ffffff
export GRASS_RENDER_FILE_READ=TRUE
export GRASS_RENDER_FILE_COMPRESSION=9
font=DejaVuSans

# start FILE WIDTH HEIGHT: a new, blank picture
start() {
    export GRASS_RENDER_FILE=$1 GRASS_RENDER_WIDTH=$2 GRASS_RENDER_HEIGHT=$3
    rm -f "$1"
    unset GRASS_RENDER_FRAME
    d.erase bgcolor=white
}

# frame TOP BOTTOM LEFT RIGHT: draw into this part of the picture (pixels)
frame() {
    export GRASS_RENDER_FRAME=$1,$2,$3,$4
    frame_height=$(( $2 - $1 ))
    frame_width=$(( $4 - $3 ))
}

# text TEXT Y [bold]: one line centred in the current frame, Y in percent
# of the frame's height from its bottom, 15-pixel letters (16 in bold).
# d.text clips to the part of the frame that the region's map would
# take, so it draws under a region of the frame's shape.
text() {
    local flags="-s" size=15
    [ "${3:-}" = bold ] && flags="-s -b" && size=16
    g.region -u --quiet n="$frame_height" s=0 w=0 e="$frame_width" res=1 \
        save="$text_region" --overwrite
    WIND_OVERRIDE=$text_region d.text $flags text="$1" at="50,$2" align=cc \
        size=$size color=black font="$font"
}

# scores REPORT: overall accuracy, kappa and cells of an accuracy report
scores() {
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("{:.3f} {:.3f} {:,}".format(r["overall_accuracy"], r["kappa"], r["cells"]))
' "$1"
}
read -r oa kappa cells <<<"$(scores "$work/report.json")"
read -r rf_oa rf_kappa _ <<<"$(scores "$work/report_rf.json")"

# The outlines of the cells the accuracy is assessed on: the held-out
# blocks where the bands have data.
r.mapcalc --quiet "$assessed = if(heldout_blocks && !isnull(landcover_fcn), 1, null())"
r.to.vect --quiet input="$assessed" output="$assessed" type=area

echo "Drawing $out/i_ann_classes.png"
start "$out/i_ann_classes.png" 1500 560
frame 0 38 0 1500
text "North Carolina, Landsat 7 ETM+ 2000: 443 x 489 cells of 28.5 m" 50 bold
# The classified maps are NULL (white) outside the scene's footprint, which
# is slightly smaller than the reference's region.
panels=("landclass96|Reference: landclass96 (1996)|what both classifiers learn from"
    "landcover_rf|Random forest on pixels: landcover_rf|OA $rf_oa, kappa $rf_kappa"
    "landcover_fcn|i.ann (fcn): landcover_fcn|OA $oa, kappa $kappa")
for column in 0 1 2; do
    IFS='|' read -r map title score <<<"${panels[$column]}"
    left=$(( 10 + column * 440 ))
    frame 36 88 "$left" $(( left + 430 ))
    text "$title" 75
    text "$score" 30
    frame 86 486 "$left" $(( left + 430 ))
    d.rast --quiet map="$map"
    d.vect --quiet map="$assessed" type=boundary color=black width=1
done
frame 86 486 1325 1500
d.legend --quiet -c raster=landclass96 at=30,80,6,22 font="$font" fontsize=14 \
    title="Land cover" title_fontsize=15
frame 492 560 0 1500
text "Outlined: the held-out blocks, never sampled for training, where both maps are assessed (OA: overall accuracy)" 72
text "on $cells cells; both classifiers learnt from the other blocks only. White: no data in one of the bands." 28

echo "Drawing $out/i_ann_probability.png"
start "$out/i_ann_probability.png" 600 460
frame 0 40 0 600
text "Probability of forest (prob_5)" 50 bold
frame 40 450 10 470
d.rast --quiet map=prob_5
frame 40 450 470 600
d.legend --quiet -t raster=prob_5 at=10,90,12,24 font="$font" fontsize=13 \
    label_values=0.2,0.4,0.6,0.8 digits=1 title="probability" title_fontsize=14

echo "Drawing $out/i_ann_uncertainty.png"
start "$out/i_ann_uncertainty.png" 600 460
frame 0 40 0 600
text "Uncertainty (entropy of the class probabilities)" 50 bold
frame 40 450 10 470
d.rast --quiet map=uncertainty
frame 40 450 470 600
d.legend --quiet -t raster=uncertainty at=10,90,12,24 font="$font" fontsize=13 \
    label_values=0.2,0.4,0.6,0.8 digits=1 title="uncertainty" title_fontsize=14

cp "$work/confusion.png" "$out/i_ann_confusion.png"
cp "$work/curves.png" "$out/i_ann_curves.png"
echo "Pictures written to $out"
