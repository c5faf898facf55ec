#!/usr/bin/env bash
# Imports the North Carolina Landsat 7 demo data into the current GRASS
# mapset (run inside a GRASS session in an EPSG:3358 project):
# six bands lsat7_2000_{10,20,30,40,50,70}, an integer reference map
# landclass96 with categories and colours, the group lsat7_2000, and the
# region set to the scene. Usage: import_nc.sh DATA_DIR
set -euo pipefail
data=$1
for band in 10 20 30 40 50 70; do
    r.in.gdal -o --overwrite --quiet input="$data/lsat7_2000_$band.tif" output="lsat7_2000_$band"
done
r.in.gdal -o --overwrite --quiet input="$data/strata.tif" output=strata_float
g.region raster=lsat7_2000_10
# strata.tif holds the classes as floats (1.023529...): round to integers.
r.mapcalc --overwrite --quiet "landclass96 = int(round(strata_float))"
g.remove -f --quiet type=raster name=strata_float
r.category landclass96 separator=pipe rules=- <<'RULES'
1|developed
2|agriculture
3|herbaceous
4|shrubland
5|forest
6|water
7|sediment
RULES
r.colors --quiet map=landclass96 rules=- <<'RULES'
1 200:40:40
2 230:200:90
3 170:220:100
4 140:160:60
5 20:110:40
6 30:90:200
7 190:170:140
RULES
i.group --quiet group=lsat7_2000 input=lsat7_2000_10,lsat7_2000_20,lsat7_2000_30,lsat7_2000_40,lsat7_2000_50,lsat7_2000_70
