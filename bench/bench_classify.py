#!/usr/bin/env python3
"""Speed and memory of i.ann.classify against model.predict on in-memory data.

A region of SIZE x SIZE cells with five bands is classified by the whole
module (reading, tiling with margins, writing the map), and the same model
predicts the same cells from an array already in memory, tile by tile
without margins (the network's own cost, the floor). The ratio of their
speeds shows what reading, seam-free tiling and writing cost. Peak memory
is the module process's maximum resident set size.

Run: python3 bench/bench_classify.py [--size 4000] [--filters 64]
     [--tile-size 512] [--sizes 4000,8000 for the memory growth check]
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from common import grass_session, module, print_table


def make_bands(size):
    import grass.script as gs

    gs.run_command("g.region", n=size, s=0, e=size, w=0, res=1)
    names = []
    for band in range(5):
        name = "band{}".format(band)
        gs.mapcalc(
            "{} = float(100 * sin(x() / (5 + {b})) * cos(y() / 7) + {b})".format(
                name, b=band
            ),
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--sizes", default="", help="extra sizes: memory growth")
    args = parser.parse_args()
    rows = []
    with grass_session() as tmp:
        bundle = os.path.join(tmp, "bundle")
        model = make_bundle(bundle, args.filters)
        bands = make_bands(args.size)
        base = baseline(model, bands, args.tile_size)
        seconds, peak = run_module(bundle, bands, args.tile_size)
        cells = args.size**2
        rows.append(
            [
                "model.predict, in memory",
                args.size,
                "{:.1f}".format(base),
                "{:.0f}".format(cells / base),
                "1.00",
                "",
            ]
        )
        rows.append(
            [
                "i.ann.classify (whole module)",
                args.size,
                "{:.1f}".format(seconds),
                "{:.0f}".format(cells / seconds),
                "{:.2f}".format(base / seconds),
                "{:.0f}".format(peak / 2**20),
            ]
        )
        for size in [int(s) for s in args.sizes.split(",") if s]:
            bands = make_bands(size)
            seconds, peak = run_module(bundle, bands, args.tile_size)
            rows.append(
                [
                    "i.ann.classify (whole module)",
                    size,
                    "{:.1f}".format(seconds),
                    "{:.0f}".format(size**2 / seconds),
                    "",
                    "{:.0f}".format(peak / 2**20),
                ]
            )
    print(
        "\ni.ann.classify, fcn with {} filters, 5 bands, tiles of {} cells\n".format(
            args.filters, args.tile_size
        )
    )
    print_table(
        [
            "run",
            "side (cells)",
            "seconds",
            "cells/s",
            "x model.predict",
            "peak RSS (MB)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
