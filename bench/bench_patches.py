#!/usr/bin/env python3
"""Speed and memory of i.ann.patches against a plain read of the same maps.

The seed study's setting: a 4000 x 4000 region at 0.25 m with five bands
(four uint16 optical bands and a float nDSM at 0.5 m) and a reference map;
24,000 training + 6,000 validation patches of 64 x 64 cells. The floor is
a plain read of the five maps into one NumPy array in this process. Peak
memory is the child process's maximum resident set size.

Run: python3 bench/bench_patches.py   (the seed study took 30 minutes)
"""

import os
import resource
import subprocess
import time

from common import grass_session, module, print_table

SIZE = 4000
NUMBER = 30000
SEED_STUDY_SECONDS = 30 * 60


def make_maps():
    import grass.script as gs

    gs.run_command("g.region", n=SIZE * 0.25, s=0, e=SIZE * 0.25, w=0, res=0.5)
    gs.mapcalc(
        "ndsm = float(max(0, 10 * sin(x() * 20) * cos(y() * 15) + rand(0.0, 1.0)))",
        seed=1,
        quiet=True,
    )
    gs.run_command("g.region", res=0.25)
    for band in range(4):
        gs.mapcalc(
            "opt{b} = int(20000 + 8000 * sin(x() * (30 + {b})) + rand(0, 4000))".format(
                b=band
            ),
            seed=band + 2,
            quiet=True,
        )
    gs.mapcalc(
        "classes = 1 + int(abs(sin(x() / 10) * cos(y() / 8)) * 6.99)", quiet=True
    )
    return ["opt0", "opt1", "opt2", "opt3", "ndsm"], "classes"


def plain_read(bands):
    from iann.grass.bands import read_band_stack
    from iann.grass.rasters import refresh_region

    refresh_region()
    start = time.perf_counter()
    stack = read_band_stack(bands)
    seconds = time.perf_counter() - start
    return seconds, stack.nbytes


def folder_bytes(folder):
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for f in os.listdir(folder)
        if f.endswith(".npy")
    )


def main():
    with grass_session() as tmp:
        bands, reference = make_maps()
        read_seconds, read_bytes = plain_read(bands)
        output = os.path.join(tmp, "patches")
        start = time.perf_counter()
        subprocess.run(
            module("i.ann.patches")
            + [
                "input=" + ",".join(bands),
                "reference=" + reference,
                "output=" + output,
                "size=64",
                "number={}".format(NUMBER),
                "validation=0.2",
                "--quiet",
            ],
            check=True,
        )
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        written = folder_bytes(output)
    print(
        "i.ann.patches, {0} x {0} cells, 5 bands, {1} patches of 64 x 64\n".format(
            SIZE, NUMBER
        )
    )
    print_table(
        ["step", "seconds", "x plain read", "peak RSS (MB)", "x patches written"],
        [
            [
                "plain read of the 5 maps",
                "{:.2f}".format(read_seconds),
                "1.0",
                "{:.0f} (array)".format(read_bytes / 2**20),
                "",
            ],
            [
                "i.ann.patches (whole module)",
                "{:.2f}".format(seconds),
                "{:.1f}".format(seconds / read_seconds),
                "{:.0f}".format(peak / 2**20),
                "{:.2f}".format(peak / written),
            ],
        ],
    )
    print(
        "\npatches written: {:.0f} MB; speed-up over the seed study's 30 min: "
        "{:.0f}x".format(written / 2**20, SEED_STUDY_SECONDS / seconds)
    )


if __name__ == "__main__":
    main()
