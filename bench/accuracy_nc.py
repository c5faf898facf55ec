#!/usr/bin/env python3
"""Accuracy of i.ann against a pixel random forest on the North Carolina scene.

One spatial split shared by every row: the scene is cut into blocks of
64 x 64 cells and a fixed quarter of them is held out (the pattern of the
demo and the NC test). Every method learns from the other blocks only and
is assessed on the held-out cells: OA, kappa, macro F1 and F1 per class.

Rows: the majority class; a 200-tree random forest on single pixels
(scikit-learn, the approach of r.learn.ml2); i.ann with its default settings
for each architecture (i.ann.patches, i.ann.train and i.ann.classify run as
a user would, with nothing but input, reference, output and architecture);
and the study's input selection, the first architecture with all six bands
and without the two SWIR bands.

Run: python3 bench/accuracy_nc.py [--work ~/i.ann-accuracy]
     [--rows majority,rf,fcn,unet,resunet,nosw] [--patches "k=v ..."]
     [--train "k=v ..."]
The GRASS project and the imported data are kept in the work folder and
reused; each i.ann row writes its patches, bundle and report there.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from common import REPO, module, print_table

BANDS = ["lsat7_2000_{}".format(b) for b in (10, 20, 30, 40, 50, 70)]
VNIR = BANDS[:4]
HELD_OUT = "(int((row() - 1) / 64) * 7 + int((col() - 1) / 64) * 3) % 4 == 0"
ARCHITECTURES = ("fcn", "unet", "resunet")


def grass_project(work):
    """The project with the data imported and the split maps (made once)."""
    import grass.script.setup as gsetup

    location = os.path.join(work, "grassdata", "nc_landsat")
    fresh = not os.path.isdir(location)
    if fresh:
        os.makedirs(os.path.dirname(location), exist_ok=True)
        subprocess.run(
            ["grass", "-c", "EPSG:3358", "-e", location],
            check=True,
            capture_output=True,
        )
    session = gsetup.init(os.path.join(location, "PERMANENT"))
    import grass.script as gs

    if fresh or not gs.find_file("heldout_ref", element="cell")["fullname"]:
        data = os.path.join(REPO, "demo", "data")
        subprocess.run(
            [sys.executable, os.path.join(REPO, "demo", "get_data.py"), data],
            check=True,
        )
        subprocess.run(
            ["bash", os.path.join(REPO, "demo", "import_nc.sh"), data], check=True
        )
        gs.mapcalc("training_blocks = if({}, null(), 1)".format(HELD_OUT), quiet=True)
        gs.mapcalc(
            "heldout_ref = if({}, landclass96, null())".format(HELD_OUT), quiet=True
        )
        gs.run_command("r.category", map="heldout_ref", raster="landclass96")
        gs.run_command("r.colors", map="heldout_ref", raster="landclass96", quiet=True)
    gs.run_command("g.region", raster="landclass96")
    return session


def scores(y_true, y_pred, values):
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    present = sorted(set(np.unique(y_true)) | set(np.unique(y_pred)))
    return {
        "overall_accuracy": accuracy_score(y_true, y_pred),
        "kappa": cohen_kappa_score(y_true, y_pred, labels=values),
        "macro_f1": f1_score(
            y_true, y_pred, labels=present, average="macro", zero_division=0
        ),
        "f1": dict(
            zip(
                values,
                f1_score(y_true, y_pred, labels=values, average=None, zero_division=0),
            )
        ),
    }


def pixel_rows(which):
    """Majority class and random forest on single pixels."""
    from grass.script import array as garray
    from sklearn.ensemble import RandomForestClassifier

    stack = np.stack([np.asarray(garray.array(b, null=np.nan)) for b in BANDS], -1)
    reference = np.asarray(garray.array("landclass96", null=-1, dtype=np.int32))
    held = np.asarray(garray.array("heldout_ref", null=-1, dtype=np.int32)) >= 0
    usable = (reference >= 0) & ~np.isnan(stack).any(-1)
    train, test = usable & ~held, usable & held
    values = sorted(int(v) for v in np.unique(reference[usable]))
    rows = {}
    if "majority" in which:
        majority = np.bincount(reference[train]).argmax()
        rows["majority class"] = scores(
            reference[test], np.full(test.sum(), majority), values
        )
        rows["majority class"]["seconds"] = 0.0
    if "rf" in which:
        start = time.perf_counter()
        forest = RandomForestClassifier(n_estimators=200, n_jobs=-1, random_state=1)
        forest.fit(stack[train], reference[train])
        seconds = time.perf_counter() - start
        rows["random forest, 200 trees, pixels"] = scores(
            reference[test], forest.predict(stack[test]), values
        )
        rows["random forest, 200 trees, pixels"]["seconds"] = seconds
    return rows, values


def options_from(text):
    """`k=v -f ...` as module arguments."""
    return [item for item in (text or "").split() if item]


def ann_row(work, name, architecture, bands, patch_options, train_options):
    """i.ann with defaults: patches (training blocks), train, classify, report."""
    import grass.script as gs

    folder = os.path.join(work, name)
    os.makedirs(folder, exist_ok=True)
    gs.run_command("r.mask", raster="training_blocks", overwrite=True, quiet=True)
    try:
        subprocess.run(
            module("i.ann.patches")
            + [
                "input=" + ",".join(bands),
                "reference=landclass96",
                "output=" + os.path.join(folder, "patches"),
                "--overwrite",
                "--quiet",
            ]
            + options_from(patch_options),
            check=True,
        )
    finally:
        gs.run_command("r.mask", flags="r", quiet=True)
    start = time.perf_counter()
    subprocess.run(
        module("i.ann.train")
        + [
            "input=" + os.path.join(folder, "patches"),
            "output=" + os.path.join(folder, "model"),
            "architecture=" + architecture,
            "plot=" + os.path.join(folder, "curves.png"),
            "--overwrite",
        ]
        + options_from(train_options),
        check=True,
    )
    seconds = time.perf_counter() - start
    report = os.path.join(folder, "report.json")
    subprocess.run(
        module("i.ann.classify")
        + [
            "input=" + ",".join(bands),
            "model=" + os.path.join(folder, "model"),
            "output=" + name,
            "reference=heldout_ref",
            "report=" + report,
            "--overwrite",
            "--quiet",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(report) as f:
        result = json.load(f)
    with open(os.path.join(folder, "model", "metadata.json")) as f:
        training = json.load(f)["training"]
    return {
        "overall_accuracy": result["overall_accuracy"],
        "kappa": result["kappa"],
        "macro_f1": result["macro_f1"],
        "f1": {c["value"]: c["f1"] for c in result["classes"]},
        "seconds": seconds,
        "epochs": "{}/{}".format(training["best_epoch"], training["epochs_run"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.expanduser("~/i.ann-accuracy"))
    parser.add_argument("--rows", default="majority,rf,fcn,unet,resunet,nosw")
    parser.add_argument("--patches", default="", help="extra i.ann.patches options")
    parser.add_argument("--train", default="", help="extra i.ann.train options")
    args = parser.parse_args()
    which = args.rows.split(",")
    os.makedirs(args.work, exist_ok=True)
    # Rows from earlier runs in the same work folder are kept, so a long
    # table can be built one row at a time (extra options apply to new rows).
    stored = os.path.join(args.work, "accuracy.json")
    earlier = {}
    if os.path.exists(stored):
        with open(stored) as f:
            earlier = json.load(f)
    session = grass_project(args.work)
    try:
        rows, values = pixel_rows(which)
        rows = {**earlier, **rows}
        ann = [a for a in ARCHITECTURES if a in which]
        for architecture in ann:
            label = "i.ann defaults, {}".format(architecture)
            rows[label] = ann_row(
                args.work, architecture, architecture, BANDS, args.patches, args.train
            )
        if "nosw" in which:
            done = [a for a in ARCHITECTURES if "i.ann defaults, " + a in rows]
            best = "fcn"
            if done:
                best = max(done, key=lambda a: rows["i.ann defaults, " + a]["kappa"])
            label = "i.ann defaults, {}, without SWIR (bands 1-4)".format(best)
            rows[label] = ann_row(
                args.work, best + "_vnir", best, VNIR, args.patches, args.train
            )
    finally:
        session.finish()
    header = ["method", "OA", "kappa", "macro F1"]
    header += ["F1 {}".format(v) for v in values]
    header += ["train s", "best/run epochs"]
    table = []
    for label, r in rows.items():
        table.append(
            [label]
            + ["{:.3f}".format(r[k]) for k in ("overall_accuracy", "kappa", "macro_f1")]
            + [
                "{:.2f}".format(r["f1"].get(str(v), r["f1"].get(v, 0.0)))
                for v in values
            ]
            + ["{:.0f}".format(r["seconds"]), r.get("epochs", "")]
        )
    print(
        "\nNorth Carolina Landsat 7 (2000) vs landclass96, held-out quarter of "
        "64 x 64-cell blocks"
    )
    print(
        "classes: 1 developed, 2 agriculture, 3 herbaceous, 4 shrubland, "
        "5 forest, 6 water, 7 sediment\n"
    )
    print_table(header, table)
    if args.patches or args.train:
        print(
            "\nextra options: patches: {!r}, train: {!r}".format(
                args.patches, args.train
            )
        )
    with open(stored, "w") as f:
        json.dump(rows, f, indent=1, default=float)


if __name__ == "__main__":
    main()
