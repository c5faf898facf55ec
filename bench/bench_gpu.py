#!/usr/bin/env python3
"""Speed of i.ann's networks and tile pipeline on whatever device Keras sees.

For each network (fcn with 32 and 64 filters, unet with 32) and precision
(float32, bfloat16: Keras' mixed_bfloat16 policy), with untrained weights
(speed does not depend on them):

- the network alone: batches of `--batch` tiles of `--tile` cells plus the
  network's margin on every side, already in memory, through the Keras
  engine i.ann.classify uses (KerasEngine, the fcn in its lean prediction
  form in float32);
- the tile pipeline: a region of `--size` x `--size` cells of five bands
  held in memory (pipeline.ArraySource) classified as one block into a
  class map in memory (pipeline.ArraySink), by the same code that
  classifies GRASS maps: tiles with margins, batches, the I/O thread,
  argmax and NULL handling;

and prints millions of output cells per second for both, and the
pipeline's rate as a share of the network's (the baseline, 1.00). The
network sees (tile + 2 margin)^2 cells to give tile^2 of them: the
network's rate here counts the tile's cells only, as the pipeline's does.

It needs neither GRASS nor TensorFlow: any Keras 3 backend runs it. On
this project's lent GPU machine (PyTorch and JAX, no Keras), with Keras
carried as wheels (see the device tool's README; Keras needs namex and
optree beside what that machine has):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site \
        .whl/*.whl && PYTHONPATH=/tmp/site KERAS_BACKEND=torch \
        python3 bench/bench_gpu.py --size 8192 --batch 8

Run: python3 bench/bench_gpu.py [--networks fcn-32,fcn-64,unet-32]
     [--precisions float32,bfloat16] [--size 2048] [--tile 1024]
     [--batch 1] [--repeat 3]
"""

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "lib"))

BANDS = 5
CLASSES = 7
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def device_description():
    import keras

    try:
        devices = [str(d) for d in keras.distribution.list_devices()]
    except Exception:  # noqa: BLE001 - some backends cannot list devices
        devices = ["?"]
    return "Keras {} on {}, devices: {}".format(
        keras.__version__, keras.backend.backend(), ", ".join(devices)
    )


def make_engine(network, precision):
    """The KerasEngine of an untrained network, and its margin and multiple."""
    from iann.nn.architectures import build_model, size_multiple, with_precision
    from iann.nn.receptive_field import receptive_field
    from iann.predict.engines import KerasEngine
    from iann.predict.tiling import tiling_margin

    architecture, filters = network.split("-")
    params = {"filters": int(filters)}
    multiple = size_multiple(architecture, params)
    model = build_model(architecture, (None, None, BANDS), CLASSES, **params)
    field, _ = receptive_field(model, BANDS, multiple)
    if precision != "float32":
        model = with_precision(model, POLICIES[precision])
    engine = KerasEngine(model, lean=precision == "float32")
    return engine, tiling_margin(field, multiple), multiple


def best_of(repeat, run):
    """The shortest of `repeat` timings of run() (after one untimed run)."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def network_rate(engine, tile, margin, multiple, batch, repeat):
    """Millions of tile cells a second, the network alone."""
    side = -(-(tile + 2 * margin) // multiple) * multiple
    rng = np.random.default_rng(0)
    # engines take tiles channels first, as the pipeline gives them
    tiles = rng.normal(size=(batch, BANDS, side, side)).astype(np.float32)
    seconds = best_of(repeat, lambda: engine.predict(tiles))
    return batch * tile * tile / seconds / 1e6


def pipeline_rate(engine, size, tile, margin, multiple, batch, repeat):
    """Millions of region cells a second through the tile pipeline."""
    from iann.predict.pipeline import (
        ArraySink,
        ArraySource,
        PredictionSettings,
        classify_block,
    )
    from iann.predict.tiling import Block, Window

    rng = np.random.default_rng(1)
    bands = rng.normal(100, 20, size=(BANDS, size, size)).astype(np.float32)
    settings = PredictionSettings(
        mean=np.full(BANDS, 100, np.float32),
        std=np.full(BANDS, 20, np.float32),
        values=tuple(range(1, CLASSES + 1)),
        margin=margin,
        multiple=multiple,
        batch=batch,
    )
    whole = Window(0, size, 0, size)
    block = Block(0, whole, whole)
    shares = []

    def run():
        sink = ArraySink(size, size, CLASSES)
        stats = classify_block(engine, settings, ArraySource(bands), sink, block, tile)
        shares.append(stats.network_seconds / stats.seconds)

    seconds = best_of(repeat, run)
    return size * size / seconds / 1e6, shares[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="fcn-32,fcn-64,unet-32")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for precision in args.precisions.split(","):
        if precision not in POLICIES:
            sys.exit("unknown precision {} (one of {})".format(precision, POLICIES))

    from tables import print_table

    print(device_description())
    print(
        "region {0} x {0} x {1} bands, tiles of {2} cells, batch {3}, best of "
        "{4}".format(args.size, BANDS, args.tile, args.batch, args.repeat)
    )
    rows = []
    for network in args.networks.split(","):
        for precision in args.precisions.split(","):
            engine, margin, multiple = make_engine(network, precision)
            alone = network_rate(
                engine, args.tile, margin, multiple, args.batch, args.repeat
            )
            through, share = pipeline_rate(
                engine, args.size, args.tile, margin, multiple, args.batch, args.repeat
            )
            rows.append(
                [
                    network,
                    precision,
                    margin,
                    "{:.2f}".format(alone),
                    "{:.2f}".format(through),
                    "{:.2f}".format(through / alone),
                    "{:.0%}".format(share),
                ]
            )
            print("  ".join(str(x) for x in rows[-1]), flush=True)
    print()
    print_table(
        [
            "network",
            "precision",
            "margin",
            "network alone (M px/s)",
            "pipeline (M px/s)",
            "pipeline / network",
            "network's share of the pipeline",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
