"""GRASS: raster rows in and out, the region and the mask, the bands on
the region's grid, reference vectors, output maps shared by many
processes, vectorising a class map, map units, the space left on the
mapset's disk.

The only package that talks to GRASS (its C library through ctypes, its
modules through grass.script); the ones above it get arrays. It imports
only iann.errors. This file itself imports nothing of
GRASS, so that the tile pipeline (predict/) can use CELL_NULL on machines
without GRASS (bench/bench_gpu.py).
"""

import numpy as np

# GRASS's NULL of a CELL (32-bit integer) map.
CELL_NULL = np.iinfo(np.int32).min
