#!/usr/bin/env python3
"""Labelling where the network is unsure: accuracy against labelled points.

On the North Carolina scene (the demo's split: a quarter of the 64 x 64
blocks held out, never seen by training), the classes of points are read
from landclass96, standing in for the person who labels them. Each method
grows one set of points, and at each count (150, 300, 450, 600, 900, 1200)
i.ann.patches cuts a patch on each point (in the training blocks), a
network is trained from scratch and classifies the scene; kappa and macro
F1 are those of i.ann.classify's report on all held-out cells.

Methods:
- random: points drawn uniformly in the training blocks;
- stratified: points of each reference class in proportion to the square
  root of its cells, 3 cells apart (what a careful person does without a
  model: the reference is used only to stratify);
- balanced: the first 150 random points, then each batch proposed by
  i.ann.sample (its default method) from the classification and
  uncertainty of the network trained on the points so far, labelled with
  v.what.rast, appended (training=first,batch1,...), retrained;
- finetune: as balanced, each network fine-tuned from the previous one
  (pretrained=, half the epochs) instead of trained from scratch;
- uncertain: as balanced, with i.ann.sample method=uncertain (the most
  uncertain cells).

Every point set is seeded (numpy for the baselines, i.ann.sample's seed=
for batches, the seed to i.ann.patches and i.ann.train). Each finished
(method, seed) is stored in active_runs.json in the work folder; a rerun
keeps the steps it can (a baseline's counts, an active method's steps
while its counts are those asked for), --tables prints the table (mean +-
sd over the seeds) and --plot draws kappa against points, one line per
method.

Run: python3 bench/active_nc.py [--work ~/i.ann-accuracy] [--seeds 1,2,3]
     [--methods random,stratified,balanced,finetune,uncertain]
     [--counts 150,300,450,600,900,1200] [--tables] [--plot FILE.png]
The GRASS project and data are those of bench/accuracy_nc.py (made in the
work folder when missing).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from accuracy_nc import BANDS, grass_project
from common import module, print_table

METHODS = ("random", "stratified", "balanced", "finetune", "uncertain")
LABELS = {
    "balanced": "balanced, from scratch",
    "finetune": "balanced, fine-tuned",
    "uncertain": "uncertain, from scratch",
}
COUNTS = (150, 300, 450, 600, 900, 1200)
# The recipe of examples/points_nc.sh with 16 filters instead of 32 (many
# networks to train on two cores), and the same number of training steps
# at every count: EPOCH_PATCHES patch-epochs (12 epochs of 1200 points), so
# that a small set of points is not also a short training.
PATCHES = ["size=32", "validation=0.2", "split=blocks", "-n"]
TRAIN = ["architecture=fcn", "filters=16", "batch_size=32", "augmentation=dihedral"]
EPOCH_PATCHES = 12 * 1200
# Fine-tuning the previous network: half the epochs of a training from scratch.
FINETUNE_SHARE = 0.5
# Cells between the points of the stratified baseline: i.ann.sample's
# default distance.
SPACING = 3


def frame_cells():
    """Rows, columns and reference classes of the cells points may fall on:
    in the training blocks, with a class and data in all bands."""
    from grass.script import array as garray

    classes = np.asarray(garray.array("landclass96", null=-1, dtype=np.int32))
    training = np.asarray(garray.array("training_blocks", null=-1, dtype=np.int32))
    usable = (classes >= 0) & (training >= 0)
    for band in BANDS:
        usable &= ~np.isnan(np.asarray(garray.array(band, null=np.nan)))
    rows, cols = np.nonzero(usable)
    return rows, cols, classes[rows, cols]


def baseline_order(method, seed, classes, rows, cols):
    """Indices of frame cells in the order a baseline takes them: the first
    N are its N points, at every N.

    stratified: shares of the reference classes proportional to the square
    root of their cells (between proportional and equal shares: equal
    shares made networks that mapped the scene's forest as water, kappa
    about 0 at every count, seed 1); at every count the class furthest
    below its share takes the next point, SPACING cells from those taken
    before, as a careful person spreads the points of a rare class rather
    than label neighbouring cells of one sand bar.
    """
    rng = np.random.default_rng(seed)
    if method == "random":
        return rng.permutation(len(classes))
    values, cells = np.unique(classes, return_counts=True)
    weights = np.sqrt(cells)
    shuffled = [list(rng.permutation(np.flatnonzero(classes == v))) for v in values]
    order, taken = [], np.zeros(len(values), int)
    occupied = set()
    reach = int(np.ceil(SPACING))

    def free(index):
        r, c = rows[index], cols[index]
        return not any(
            (r + i, c + j) in occupied
            for i in range(-reach, reach + 1)
            for j in range(-reach, reach + 1)
            if i * i + j * j < SPACING * SPACING
        )

    while len(order) < min(max(COUNTS), len(classes)):
        open_ = np.flatnonzero([len(s) > 0 for s in shuffled])
        if not len(open_):
            break
        index = open_[np.argmin(taken[open_] / weights[open_])]
        cell = shuffled[index].pop(0)
        if free(cell):
            order.append(cell)
            occupied.add((rows[cell], cols[cell]))
            taken[index] += 1
    return np.array(order)


def write_points(name, x, y, classes):
    from iann.grass.points import write_points as write

    write(name, x, y, [("class", "integer", [int(c) for c in classes])], [])


def train_and_assess(folder, maps, count, seed, pretrained=None):
    """Patches on the points, a network, the scene classified: the scores,
    and the seconds of each module."""
    import grass.script as gs

    seconds = {}
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    gs.run_command("r.mask", raster="training_blocks", overwrite=True, quiet=True)
    try:
        subprocess.run(
            module("i.ann.patches")
            + [
                "input=" + ",".join(BANDS),
                "training=" + ",".join(maps),
                "column=class",
                "output=" + os.path.join(folder, "patches"),
                "number={}".format(count),
                "seed={}".format(seed),
                "--overwrite",
                "--quiet",
            ]
            + PATCHES,
            check=True,
        )
    finally:
        gs.run_command("r.mask", flags="r", quiet=True)
    seconds["patches"] = time.perf_counter() - start
    start = time.perf_counter()
    epochs = round(EPOCH_PATCHES / count)
    train = list(TRAIN) + ["epochs={}".format(epochs)]
    if pretrained:
        train[-1] = "epochs={}".format(max(1, round(FINETUNE_SHARE * epochs)))
        train.append("pretrained=" + pretrained)
    subprocess.run(
        module("i.ann.train")
        + [
            "input=" + os.path.join(folder, "patches"),
            "output=" + os.path.join(folder, "model"),
            "seed={}".format(seed),
            "--overwrite",
            "--quiet",
        ]
        + train,
        check=True,
    )
    seconds["train"] = time.perf_counter() - start
    step = classify_scene(folder)
    step["points"] = count
    step["seconds"] = dict(seconds, classify=step["seconds"]["classify"])
    return step


def classify_scene(folder):
    """The scene classified with the folder's network (active_classes and
    active_uncertainty, which i.ann.sample reads): its scores on the
    held-out blocks."""
    start = time.perf_counter()
    report = os.path.join(folder, "report.json")
    subprocess.run(
        module("i.ann.classify")
        + [
            "input=" + ",".join(BANDS),
            "model=" + os.path.join(folder, "model"),
            "output=active_classes",
            "uncertainty=active_uncertainty",
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
    return {
        "kappa": result["kappa"],
        "macro_f1": result["macro_f1"],
        "overall_accuracy": result["overall_accuracy"],
        "seconds": {"classify": time.perf_counter() - start},
    }


def propose(batch, maps, npoints, seed, method):
    """A batch from i.ann.sample, under a MASK of the frame, labelled from
    landclass96 (the person's part)."""
    import grass.script as gs

    start = time.perf_counter()
    gs.run_command("r.mask", raster="active_frame", overwrite=True, quiet=True)
    try:
        subprocess.run(
            module("i.ann.sample")
            + [
                "classified=active_classes",
                "uncertainty=active_uncertainty",
                "training=" + ",".join(maps),
                "npoints={}".format(npoints),
                "method=" + method,
                "seed={}".format(seed),
                "output=" + batch,
                "--overwrite",
                "--quiet",
            ],
            check=True,
        )
    finally:
        gs.run_command("r.mask", flags="r", quiet=True)
    gs.run_command(
        "v.what.rast", map=batch, raster="landclass96", column="class", quiet=True
    )
    return time.perf_counter() - start


def batch_name(method, seed, k):
    return "{}_s{}_batch{}".format(method, seed, k)


def run_method(work, method, seed, counts, frame, kept=()):
    """The steps of one method and seed at each count. kept: the steps of
    an earlier run, reused where they are what this run would compute."""
    import grass.script as gs

    region = gs.region()
    rows, cols, classes = frame
    x = region["w"] + (cols + 0.5) * region["ewres"]
    y = region["n"] - (rows + 0.5) * region["nsres"]
    steps = []
    folder = os.path.join(work, "active", "{}_s{}".format(method, seed))
    if method in ("random", "stratified"):
        # A baseline's points at a count do not depend on the other counts.
        done = {step["points"]: step for step in kept}
        order = baseline_order(method, seed, classes, rows, cols)
        for count in counts:
            if count in done:
                steps.append(done[count])
                continue
            take = order[:count]
            name = "{}_s{}_{}".format(method, seed, count)
            write_points(name, x[take], y[take], classes[take])
            step = train_and_assess(
                os.path.join(folder, str(count)), [name], count, seed
            )
            steps.append(step)
            print(method, seed, json.dumps(step), flush=True)
        return steps
    # The active methods start from the random method's first points.
    first = baseline_order("random", seed, classes, rows, cols)[: counts[0]]
    maps = ["{}_s{}_first".format(method, seed)]
    write_points(maps[0], x[first], y[first], classes[first])
    # An active method's step depends on all counts before it: the earlier
    # run's steps are kept while its counts agree and its networks and
    # batches are still there.
    reuse = 0
    for k, step in enumerate(kept[: len(counts)]):
        if (
            step["points"] != counts[k]
            or not os.path.exists(os.path.join(folder, str(counts[k]), "model"))
            or (k and not gs.find_file(batch_name(method, seed, k), "vector")["name"])
        ):
            break
        reuse = k + 1
    previous = None
    for k, count in enumerate(counts):
        here = os.path.join(folder, str(count))
        if k < reuse:
            step = kept[k]
            if k + 1 == reuse and k + 1 < len(counts):
                # The next batch is new: i.ann.sample reads this network's maps.
                classify_scene(here)
        else:
            step = train_and_assess(
                here,
                maps,
                count,
                seed,
                pretrained=previous if method == "finetune" else None,
            )
        previous = os.path.join(here, "model")
        if k + 1 < len(counts):
            batch = batch_name(method, seed, k + 1)
            if k + 1 >= reuse:
                step["seconds"]["sample"] = propose(
                    batch,
                    maps,
                    counts[k + 1] - count,
                    100 * seed + k,
                    "uncertain" if method == "uncertain" else "balanced",
                )
            maps.append(batch)
        steps.append(step)
        print(method, seed, json.dumps(step), flush=True)
    return steps


def mean_sd(values):
    return "{:.3f} ± {:.3f}".format(np.mean(values), np.std(values, ddof=1))


def tables(runs, methods, counts):
    for key, title in (("kappa", "kappa"), ("macro_f1", "macro F1")):
        print("\n{} on the held-out blocks, mean ± sd over seeds".format(title))
        header = ["points"] + [m for m in methods if m in runs]
        rows = []
        for count in counts:
            row = [count]
            for method in header[1:]:
                values = [
                    step[key]
                    for steps in runs[method].values()
                    for step in steps
                    if step["points"] == count
                ]
                row.append(mean_sd(values) if len(values) > 1 else "-")
            rows.append(row)
        print_table(header, rows)
    print("\nCPU seconds per step (training + classification + sampling), mean")
    header = ["points"] + [m for m in methods if m in runs]
    rows = []
    for count in counts:
        row = [count]
        for method in header[1:]:
            values = [
                sum(step["seconds"].values())
                for steps in runs[method].values()
                for step in steps
                if step["points"] == count
            ]
            row.append("{:.0f}".format(np.mean(values)) if values else "-")
        rows.append(row)
    print_table(header, rows)
    seeds = {m: sorted(runs[m]) for m in header[1:]}
    print(
        "\nseeds: "
        + "; ".join("{} {}".format(m, ",".join(s)) for m, s in seeds.items())
    )


def plot(runs, methods, counts, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for method in [m for m in methods if m in runs]:
        means, sds, xs = [], [], []
        for count in counts:
            values = [
                step["kappa"]
                for steps in runs[method].values()
                for step in steps
                if step["points"] == count
            ]
            if values:
                xs.append(count)
                means.append(np.mean(values))
                sds.append(np.std(values, ddof=1) if len(values) > 1 else 0)
        means, sds = np.array(means), np.array(sds)
        axes.plot(xs, means, marker="o", label=LABELS.get(method, method))
        axes.fill_between(xs, means - sds, means + sds, alpha=0.15)
        if method == "random" and xs:
            # The goal: this kappa with at most half the points.
            axes.axhline(means[-1], color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel("labelled points")
    axes.set_ylabel("kappa, held-out blocks")
    axes.set_title("North Carolina: kappa against labelled points (mean ± sd)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    print("plot written to " + path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.expanduser("~/i.ann-accuracy"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)))
    parser.add_argument("--tables", action="store_true", help="print, run nothing")
    parser.add_argument("--plot", help="PNG of kappa against points")
    args = parser.parse_args()
    methods = args.methods.split(",")
    counts = [int(c) for c in args.counts.split(",")]
    stored = os.path.join(args.work, "active_runs.json")
    runs = {}
    if os.path.exists(stored):
        with open(stored) as f:
            runs = json.load(f)
    if not args.tables:
        os.makedirs(args.work, exist_ok=True)
        session = grass_project(args.work)
        try:
            import grass.script as gs

            frame = frame_cells()
            gs.mapcalc(
                "active_frame = if(training_blocks && !isnull(landclass96) && "
                "!isnull({}), 1, null())".format(" + ".join(BANDS)),
                overwrite=True,
                quiet=True,
            )
            # The three methods of the comparison over all seeds first, then
            # the variants: a run cut short still has a full first table.
            core = [m for m in methods if m in METHODS[:3]]
            order = [(s, m) for s in args.seeds.split(",") for m in core] + [
                (s, m) for s in args.seeds.split(",") for m in methods if m not in core
            ]
            for seed, method in order:
                kept = runs.get(method, {}).get(seed, [])
                if [step["points"] for step in kept] == counts:
                    continue
                steps = run_method(args.work, method, int(seed), counts, frame, kept)
                runs.setdefault(method, {})[seed] = steps
                with open(stored, "w") as f:
                    json.dump(runs, f, indent=1)
        finally:
            session.finish()
    tables(runs, methods, counts)
    if args.plot:
        plot(runs, methods, counts, args.plot)


if __name__ == "__main__":
    sys.exit(main())
