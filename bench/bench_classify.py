#!/usr/bin/env python3
"""Speed and memory of i.ann.classify against model.predict on in-memory data.

A region of SIZE x SIZE cells with five bands is classified by the whole
module (reading, tiling with margins, writing the map), and the same model
predicts the same cells from an array already in memory, tile by tile
without margins (the network's own cost, the floor). Two floors: the
bundle's model as trained, and the same network in the form i.ann.classify
predicts with (for the fcn: its classifier split over the blocks, the same
probabilities in half the memory). The ratios show what reading, seam-free
tiling and writing cost. Peak memory is the module process's maximum
resident set size.

--sizes adds whole-module runs on larger squares (e.g. 8000, the seed
study's tile). --growth SIDE classifies SIDE x SIDE and a region twice as
tall with a narrow network (--growth-filters, fast): the peak memory must
not grow with the region.

Run: python3 bench/bench_classify.py [--size 4000] [--filters 64]
     [--tile-size 1024] [--sizes 8000] [--growth 8000 --growth-filters 8]
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from common import grass_session, module, print_table


def make_bands(rows, cols=None):
    import grass.script as gs

    gs.run_command("g.region", n=rows, s=0, e=cols or rows, w=0, res=1)
    names = []
    for band in range(5):
        name = "band{}".format(band)
        gs.mapcalc(
            "{} = float(100 * sin(x() / (5 + {b})) * cos(y() / 7) + {b})".format(
                name, b=band
            ),
            overwrite=True,
            quiet=True,
        )
        names.append(name)
    return names


def make_bundle(folder, filters):
    """A bundle with an untrained fcn (speed does not depend on the weights)."""
    from iann import BUNDLE_FORMAT
    from iann.bundle import save_bundle
    from iann.models import build_fcn, receptive_field, tiling_margin

    model = build_fcn((None, None, 5), 7, filters=filters)
    field, _ = receptive_field(model, 5)
    metadata = {
        "format": BUNDLE_FORMAT,
        "architecture": "fcn",
        "parameters": {"filters": filters},
        "bands": [{"name": "band{}".format(i)} for i in range(5)],
        "classes": [
            {"index": i, "value": i + 1, "label": str(i + 1), "color": None}
            for i in range(7)
        ],
        "normalisation": {"mean": [0.0] * 5, "std": [100.0] * 5},
        "receptive_field": field,
        "margin": tiling_margin(field),
    }
    os.makedirs(folder)
    save_bundle(folder, model, metadata)
    return model


def baseline(model, bands, tile):
    """model.predict on the region's cells already in memory, no margins."""
    from iann.dataset import read_band_stack
    from iann.grassio import refresh_region

    refresh_region()
    stack = np.moveaxis(read_band_stack(bands), 0, -1) / 100.0
    rows, cols = stack.shape[:2]
    model.predict_on_batch(stack[None, :tile, :tile])  # warm-up
    start = time.perf_counter()
    for r in range(0, rows, tile):
        for c in range(0, cols, tile):
            np.argmax(
                model.predict_on_batch(stack[None, r : r + tile, c : c + tile]), -1
            )
    return time.perf_counter() - start


PEAK_OF_CHILD = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run_module(bundle, bands, tile):
    """Seconds and peak RSS (bytes) of one module run, in a fresh parent."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PEAK_OF_CHILD]
        + module("i.ann.classify")
        + [
            "input=" + ",".join(bands),
            "model=" + bundle,
            "output=classified",
            "tile_size={}".format(tile),
            "--overwrite",
            "--quiet",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    return seconds, int(result.stdout.split()[-1]) * 1024


def main():
    from iann.models import fcn_for_prediction

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--sizes", default="", help="extra squares, module only")
    parser.add_argument("--growth", type=int, default=0, help="side: memory growth")
    parser.add_argument("--growth-filters", type=int, default=8)
    args = parser.parse_args()
    rows = []

    def add(row):
        # Printed as measured too: the large runs take many minutes.
        rows.append(row)
        print(" | ".join(str(x) for x in row), flush=True)

    def module_row(label, bundle, bands, shape, base=None):
        seconds, peak = run_module(bundle, bands, args.tile_size)
        cells = shape[0] * shape[1]
        ratios = ["{:.2f}".format(b / seconds) if b else "" for b in (base or ("", ""))]
        add(
            [label, "{} x {}".format(*shape), "{:.1f}".format(seconds)]
            + ["{:.0f}".format(cells / seconds)]
            + ratios
            + ["{:.0f}".format(peak / 2**20)]
        )
        return peak

    with grass_session() as tmp:
        bundle = os.path.join(tmp, "bundle")
        model = make_bundle(bundle, args.filters)
        shape = (args.size, args.size)
        bands = make_bands(args.size)
        cells = args.size**2
        floors = []
        for label, network in (
            ("model.predict, bundle's model, in memory", model),
            ("model.predict, prediction form, in memory", fcn_for_prediction(model)),
        ):
            seconds = baseline(network, bands, args.tile_size)
            floors.append(seconds)
            add(
                [label, "{} x {}".format(*shape), "{:.1f}".format(seconds)]
                + ["{:.0f}".format(cells / seconds), "", "", ""]
            )
        for i, j in ((0, 4), (1, 5)):
            rows[i][j] = "1.00"
        rows[0][5] = "{:.2f}".format(floors[1] / floors[0])
        rows[1][4] = "{:.2f}".format(floors[0] / floors[1])
        module_row("i.ann.classify (whole module)", bundle, bands, shape, floors)
        for size in [int(s) for s in args.sizes.split(",") if s]:
            bands = make_bands(size)
            module_row("i.ann.classify (whole module)", bundle, bands, (size, size))
        if args.growth:
            small = os.path.join(tmp, "small")
            make_bundle(small, args.growth_filters)
            peaks = []
            for height in (args.growth, 2 * args.growth):
                bands = make_bands(height, args.growth)
                label = "i.ann.classify, fcn-{}".format(args.growth_filters)
                peaks.append(module_row(label, small, bands, (height, args.growth)))
    print(
        "\ni.ann.classify, fcn with {} filters, 5 bands, tiles of {} cells\n".format(
            args.filters, args.tile_size
        )
    )
    print_table(
        [
            "run",
            "rows x cols",
            "seconds",
            "cells/s",
            "x bundle's model.predict",
            "x prediction form's",
            "peak RSS (MB)",
        ],
        rows,
    )
    if args.growth:
        print(
            "\nPeak memory, region twice as tall: {:.2f} x".format(peaks[1] / peaks[0])
        )


if __name__ == "__main__":
    main()
