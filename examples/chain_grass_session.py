#!/usr/bin/env python3
"""The i.ann chain from plain Python, outside GRASS, with grass-session.

    python3 examples/chain_grass_session.py ~/i.ann-demo/grassdata nc_landsat \\
        ~/i.ann-example [--mapset example]

The project must hold the North Carolina demo data in PERMANENT and i.ann
must be installed (g.extension) in GRASS_ADDON_BASE (default
~/.local/share/grass8/addons). The chain itself is the one of
chain_grass_exec.py, run in its own mapset.

Two quirks of grass-session 0.5 with GRASS 8, worked around below: on
import it sets GRASS_ADDON_BASE to ~/.grass7/addons and puts only GRASS 7
paths on PATH, so GRASS 8 addons are not found (set both back after the
import); and it forces LANG/LC_ALL=en_US.UTF-8, which makes shells print
harmless setlocale warnings where that locale is not generated.
"""

import argparse
import os
import sys

ADDONS = os.environ.get(
    "GRASS_ADDON_BASE", os.path.expanduser("~/.local/share/grass8/addons")
)

from grass_session import Session  # noqa: E402 - after reading the addon base

os.environ["GRASS_ADDON_BASE"] = ADDONS
os.environ["PATH"] = os.pathsep.join(
    [os.path.join(ADDONS, "scripts"), os.path.join(ADDONS, "bin"), os.environ["PATH"]]
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gisdb")
    parser.add_argument("location")
    parser.add_argument("work", help="folder for patches, model and report")
    parser.add_argument("--mapset", default="example")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--number", type=int, default=1500)
    parser.add_argument("--filters", type=int, default=32)
    args = parser.parse_args()
    with Session(gisdb=args.gisdb, location=args.location, mapset="PERMANENT"):
        import grass.script as gs

        gs.run_command("g.mapset", flags="c", mapset=args.mapset, quiet=True)
    with Session(gisdb=args.gisdb, location=args.location, mapset=args.mapset):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from chain_grass_exec import chain

        report = chain(args.work, args.epochs, args.number, args.filters)
    print(
        "overall accuracy {:.3f}, kappa {:.3f} on {} held-out cells".format(
            report["overall_accuracy"], report["kappa"], report["cells"]
        )
    )


if __name__ == "__main__":
    main()
