#!/usr/bin/env python3
"""Training speed of i.ann.train against model.fit on in-memory arrays.

A dataset of 64 x 64 x 5 patches (the seed study's setting) is cut by
i.ann.patches from synthetic maps. In one process, the same model (same
architecture, filters, seed) is trained twice for the same epochs: by the
library's training loop, as i.ann.train runs it (memory-mapped patches,
standardised and weighted batch by batch by worker threads, per-epoch
messages and checkpoints), and by a plain model.fit on the same patches
already standardised in memory. The first epoch of each (graph building)
is left out of the figures. Also printed: the time of one epoch of the
study's 24,000 patches, extrapolated from the patches per second.

Run: python3 bench/bench_train.py [--patches 320] [--epochs 3]
     [--filters 64] [--architecture fcn] [--batch-size 32]
"""

import argparse
import os
import subprocess
import time

import numpy as np

from common import grass_session, module, print_table

SEED_PATCHES = 24000


def make_dataset(folder, patches, size=64):
    """i.ann.patches on five synthetic bands and a 7-class reference."""
    import grass.script as gs

    side = 1200
    gs.run_command("g.region", n=side, s=0, e=side, w=0, res=1)
    bands = []
    for band in range(5):
        name = "band{}".format(band)
        gs.mapcalc(
            "{} = float(100 * sin(x() / (5 + {b})) * cos(y() / 7) + {b})".format(
                name, b=band
            ),
            quiet=True,
        )
        bands.append(name)
    gs.mapcalc("ref = 1 + int(band0 + 100) % 7", quiet=True)
    subprocess.run(
        module("i.ann.patches")
        + [
            "input=" + ",".join(bands),
            "reference=ref",
            "output=" + folder,
            "size={}".format(size),
            "number={}".format(patches),
            "validation=0",
            "split=random",
            "--quiet",
        ],
        check=True,
    )


def plain_fit(dataset, settings, malloc_tuning=False):
    """Seconds per epoch (after the first) of model.fit on in-memory arrays.

    With `malloc_tuning`, the fit also gets i.ann's MallocTuning callback,
    which undoes TensorFlow's glibc malloc setting: the same network and
    arrays, without the cost that setting adds to every batch.
    """
    import keras

    from iann.formats.dataset import UNLABELLED, load_dataset
    from iann.nn.architectures import build_model
    from iann.nn.losses import make_loss
    from iann.nn.normalise import band_transform, standardise
    from iann.train.callbacks import MallocTuning

    meta, arrays = load_dataset(dataset)
    mean, std = band_transform(meta.statistics)
    x = standardise(arrays["train_images"], mean, std)
    codes = np.asarray(arrays["train_labels"])
    weights = (codes != UNLABELLED).astype(np.float32)
    y = np.where(codes != UNLABELLED, codes, 0).astype(np.int32)
    keras.utils.set_random_seed(settings["seed"])
    params = {"filters": settings["filters"]}
    if settings["architecture"] != "fcn":
        params["depth"] = settings["depth"]
    model = build_model(
        settings["architecture"], (None, None, x.shape[-1]), len(meta.classes), **params
    )
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss=make_loss("crossentropy", 2.0),
        weighted_metrics=["accuracy"],
    )
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(
        x,
        y,
        sample_weight=weights,
        batch_size=settings["batch_size"],
        epochs=settings["epochs"],
        shuffle=True,
        verbose=0,
        callbacks=[Timer()] + ([MallocTuning()] if malloc_tuning else []),
    )
    return times[1:], len(x)


def library_fit(dataset, settings, checkpoint):
    """Seconds per epoch (after the first) of i.ann.train's training loop."""
    from iann.train.run import train

    _model, metadata = train(dataset, settings, checkpoint=checkpoint)
    return metadata.training["epoch_seconds"][1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--architecture", default="fcn")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    settings = {
        "architecture": args.architecture,
        "filters": args.filters,
        "depth": args.depth,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": 1e-3,
        "seed": 1,
        # i.ann.train's default; model.fit gets the patches as they are.
        "augment": True,
    }
    with grass_session() as tmp:
        dataset = os.path.join(tmp, "patches")
        make_dataset(dataset, args.patches)
        base, n = plain_fit(dataset, settings)
        tuned, _n = plain_fit(dataset, settings, malloc_tuning=True)
        ours = library_fit(dataset, settings, os.path.join(tmp, "checkpoint"))
    import keras

    rows = []
    for name, times in (
        ("model.fit, in-memory arrays", base),
        ("model.fit, in-memory arrays, malloc setting undone", tuned),
        ("i.ann.train loop (mmap, workers, augmentation, checkpoints)", ours),
    ):
        per_epoch = float(np.mean(times))
        rate = n / per_epoch
        rows.append(
            [
                name,
                "{:.1f}".format(per_epoch),
                "{:.1f}".format(rate),
                "{:.2f}".format(np.mean(base) / per_epoch),
                "{:.0f}".format(SEED_PATCHES / rate / 60),
            ]
        )
    from iann.train.devices import training_device

    print(
        "\n{} patches of 64 x 64 x 5, {} with {} filters, batch {}, {}; "
        "mean of epochs 2..{}\n".format(
            n,
            args.architecture,
            args.filters,
            args.batch_size,
            training_device(),
            args.epochs,
        )
    )
    print_table(
        [
            "training",
            "s/epoch",
            "patches/s",
            "x model.fit",
            "min/epoch for 24,000 patches",
        ],
        rows,
    )
    print("\nKeras {} ({} backend)".format(keras.__version__, keras.backend.backend()))


if __name__ == "__main__":
    main()
