#!/usr/bin/env python3
"""The i.ann chain from a Python script run by GRASS itself (grass --exec).

Run inside a project holding the North Carolina demo data (demo/import_nc.sh
imports it), with i.ann installed (g.extension):

    grass ~/i.ann-demo/grassdata/nc_landsat/PERMANENT --exec \\
        python3 examples/chain_grass_exec.py ~/i.ann-example

It holds out a quarter of the scene as 64 x 64-cell blocks, cuts patches in
the other blocks (under a MASK), trains, classifies the scene and prints
the accuracy on the held-out blocks. --epochs, --number and --filters make
it shorter (the test suite runs it with a tiny training).
"""

import argparse
import json
import os

import grass.script as gs

BANDS = ",".join("lsat7_2000_{}".format(b) for b in (10, 20, 30, 40, 50, 70))
HELD_OUT = "(int((row() - 1) / 64) * 7 + int((col() - 1) / 64) * 3) % 4 == 0"


def chain(work, epochs, number, filters):
    """Patches, training, classification and report; returns the report."""
    os.makedirs(work, exist_ok=True)
    gs.run_command("g.region", raster="landclass96")
    gs.mapcalc("training_blocks = if({}, null(), 1)".format(HELD_OUT), overwrite=True)
    gs.mapcalc(
        "heldout_ref = if({}, landclass96, null())".format(HELD_OUT), overwrite=True
    )
    gs.run_command("r.mask", raster="training_blocks", overwrite=True)
    try:
        gs.run_command(
            "i.ann.patches",
            input=BANDS,
            reference="landclass96",
            output=os.path.join(work, "patches"),
            size=32,
            number=number,
            overwrite=True,
        )
    finally:
        gs.run_command("r.mask", flags="r")
    gs.run_command(
        "i.ann.train",
        input=os.path.join(work, "patches"),
        output=os.path.join(work, "model"),
        filters=filters,
        epochs=epochs,
        overwrite=True,
    )
    report = os.path.join(work, "report.json")
    gs.run_command(
        "i.ann.classify",
        input=BANDS,
        model=os.path.join(work, "model"),
        output="landcover_ann",
        reference="heldout_ref",
        report=report,
        overwrite=True,
    )
    with open(report) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", help="folder for patches, model and report")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--number", type=int, default=1500)
    parser.add_argument("--filters", type=int, default=32)
    args = parser.parse_args()
    report = chain(args.work, args.epochs, args.number, args.filters)
    print(
        "overall accuracy {:.3f}, kappa {:.3f} on {} held-out cells".format(
            report["overall_accuracy"], report["kappa"], report["cells"]
        )
    )


if __name__ == "__main__":
    main()
