#!/usr/bin/env python3
"""Speed of i.ann.sample against reading its two maps, per cell.

One pass over the class and uncertainty maps is i.ann.sample's whole cost
in the region's size: the floor is reading the two maps (the library's
row reader, as the module reads them). Rows, all in one process:
- read: the two maps read, nothing else (the floor);
- keys and candidates: read, plus every cell's key and the candidates kept
  (iann.labelling's scan, as the module runs it with nprocs=1);
- r.univar on the uncertainty map: GRASS's own one-pass statistics, for
  scale;
- the module, npoints=1000, nprocs=1 and nprocs=2 (with its start-up and
  the point map written).

Run: python3 bench/bench_sample.py [--size 8000] [--npoints 1000]
The maps are made by r.mapcalc in a throw-away project (10 classes in
stripes, a smooth uncertainty field).
"""

import argparse
import subprocess
import sys
import time

import numpy as np

from common import grass_session, module, print_table


def timed(function, repeat=2):
    """Seconds of the fastest of `repeat` runs."""
    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000, help="rows and columns")
    parser.add_argument("--npoints", type=int, default=1000)
    args = parser.parse_args()
    with grass_session():
        import grass.script as gs

        from iann.grass.rasters import RowReader, read_int_rows, refresh_region
        from iann.labelling.batch import scan
        from iann.labelling.propose import POOL_PER_POINT, chunk_rows

        gs.run_command("g.region", rows=args.size, cols=args.size, n=args.size, s=0)
        gs.run_command("g.region", e=args.size, w=0, res=1)
        gs.mapcalc("classes = 1 + (row() / 97 + col() / 89) % 10", quiet=True)
        gs.write_command(
            "r.category",
            map="classes",
            rules="-",
            separator="pipe",
            stdin="".join("{}|class {}\n".format(v, v) for v in range(1, 11)),
        )
        gs.mapcalc(
            "uncertainty = float(0.5 + 0.5 * sin(row() * 0.01) * cos(col() * 0.013))",
            quiet=True,
        )
        refresh_region()
        cells = args.size * args.size

        def read_only():
            with RowReader("classes") as classes, RowReader("uncertainty") as values:
                step = chunk_rows(classes.cols)
                buffer = np.empty((step, values.cols), np.float32)
                for first in range(0, args.size, step):
                    last = min(first + step, args.size)
                    read_int_rows(classes, first, last)
                    values.read_float_rows(first, buffer[: last - first])

        def keys_and_candidates():
            scan(
                "classes",
                "uncertainty",
                "balanced",
                1,
                POOL_PER_POINT * args.npoints,
                1,
            )

        def univar():
            gs.read_command("r.univar", map="uncertainty", flags="g")

        def the_module(nprocs):
            def run():
                subprocess.run(
                    module("i.ann.sample")
                    + [
                        "classified=classes",
                        "uncertainty=uncertainty",
                        "npoints={}".format(args.npoints),
                        "nprocs={}".format(nprocs),
                        "output=batch",
                        "--overwrite",
                        "--quiet",
                    ],
                    check=True,
                    stderr=subprocess.DEVNULL,
                )

            return run

        rows = []
        floor = timed(read_only)
        for name, function in (
            ("read the two maps (floor)", read_only),
            ("read, keys and candidates", keys_and_candidates),
            ("r.univar on the uncertainty map", univar),
            ("i.ann.sample, nprocs=1", the_module(1)),
            ("i.ann.sample, nprocs=2", the_module(2)),
        ):
            seconds = floor if function is read_only else timed(function)
            rows.append(
                [
                    name,
                    "{:.2f}".format(seconds),
                    "{:.1f}".format(cells / seconds / 1e6),
                    "{:.2f}".format(seconds / floor),
                ]
            )
        print(
            "{} x {} cells ({:.0f} M), npoints={}".format(
                args.size, args.size, cells / 1e6, args.npoints
            )
        )
        print_table(["step", "seconds", "M cells/s", "time / floor"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
