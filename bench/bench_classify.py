#!/usr/bin/env python3
"""Speed and memory of i.ann.classify's engines and block path.

On a region of SIZE x SIZE cells with five bands, for each network (fcn
with 32 and 64 filters, unet with 32; and `csmask`: ukis-csmask's 6-band
EfficientNet-B4 U-Net, imported by i.ann.train import=, on a sixth band
too, tiles of its 256 cells, ONNX Runtime in memory as the baseline), in
one run:

- the network's own speed on the cells already in memory, tiles of
  TILE cells without margins: TensorFlow's predict (the baseline, 1.00),
  ONNX Runtime and OpenVINO on the bundle's model.onnx;
- the whole module, i.ann.classify engine=keras|onnx|openvino (reading,
  seam-free tiling with margins, writing the map), one process.

Then the block path, fcn with 32 filters, engine=auto: one process with one
block (the whole region, as before blocks existed), one process with
blocks of --block-size, the same plan run by one Dask worker (a real
`dask scheduler` and `dask worker` on 127.0.0.1) and by nprocs=2 (a Dask
LocalCluster of two one-thread workers). Peak memory: the largest resident
set of any process of the run (module, nanny or worker). Also the seconds
model.onnx takes to export, for each network.

Run: python3 bench/bench_classify.py [--size 4000] [--tile-size 1024]
     [--networks fcn-32,fcn-64,unet-32,csmask] [--block-size 2048] [--no-blocks]
     [--repeat 1]
(`--networks ""` runs the block path alone; `--repeat N` runs it N times,
its runs in turn, and prints the median and the range of each.)
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np

from common import REPO, grass_session, module, print_table


def make_bands(size):
    import grass.script as gs

    gs.run_command("g.region", n=size, s=0, e=size, w=0, res=1)
    names = []
    for band in range(6):
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


def make_bundle(folder, network):
    """A bundle with an untrained network (speed does not depend on weights)."""
    from iann.formats.bundle import BundleMetadata
    from iann.nn.architectures import build_model, size_multiple
    from iann.nn.receptive_field import receptive_field
    from iann.predict.tiling import tiling_margin
    from iann.train.saving import save_bundle

    architecture, filters = network.split("-")
    params = {"filters": int(filters)}
    multiple = size_multiple(architecture, params)
    model = build_model(architecture, (None, None, 5), 7, **params)
    model(np.zeros((1, 64, 64, 5), np.float32))
    field, _ = receptive_field(model, 5, multiple)
    metadata = BundleMetadata(
        architecture=architecture,
        parameters=params,
        size_multiple=multiple,
        bands=[{"name": "band{}".format(i)} for i in range(5)],
        classes=[
            {"index": i, "value": i + 1, "label": str(i + 1), "color": None}
            for i in range(7)
        ],
        normalisation={"mean": [0.0] * 5, "std": [100.0] * 5},
        receptive_field=field,
        margin=tiling_margin(field, multiple),
    )
    os.makedirs(folder)
    metadata, problem = save_bundle(folder, model, metadata)
    if problem:
        sys.exit("{}: {}".format(network, problem))
    return model, metadata


def import_csmask(folder):
    """ukis-csmask's 6-band model, imported as the manual shows."""
    import json

    import ukis_csmask

    source = os.path.join(os.path.dirname(ukis_csmask.__file__), "model_6b_l1c")
    with open(source + ".json") as f:
        mean, std = json.load(f)["data"]["dataset_statistics"]["img"]
    subprocess.run(
        module("i.ann.train")
        + [
            "import={}.onnx".format(source),
            "output=" + folder,
            "classes=clear,cloud,shadow",
            "mean=" + ",".join(map(str, mean)),
            "std=" + ",".join(map(str, std)),
            "margin=26",
        ],
        check=True,
        capture_output=True,
    )


def onnx_session(path, threads):
    """model.onnx as on disk (Deepness's form) in ONNX Runtime: a predict
    function and the side of its tiles."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return (lambda tile: session.run(None, {name: tile})[0]), (
        session.get_inputs()[0].shape[-1]
    )


def fixed_size_in_memory(predict, stack, size, margin):
    """Seconds to predict the stack in tiles of one fixed size, each core
    that size less two margins, the last ones filled with zeros."""
    core = size - 2 * margin
    bands, rows, cols = stack.shape
    tile = np.zeros((1, bands, size, size), np.float32)
    predict(tile)  # warm-up
    start = time.perf_counter()
    for r in range(0, rows, core):
        for c in range(0, cols, core):
            window = stack[:, max(r - margin, 0) : r + core + margin][
                :, :, max(c - margin, 0) : c + core + margin
            ]
            tile[:] = 0
            tile[0, :, : window.shape[1], : window.shape[2]] = window
            np.argmax(predict(tile), 1)
    return time.perf_counter() - start


def in_memory(engine, stack, tile):
    """Seconds to predict the (bands, rows, cols) stack tile by tile (argmax
    included)."""
    rows, cols = stack.shape[1:]
    engine.predict(np.ascontiguousarray(stack[None, :, :tile, :tile]))  # warm-up
    start = time.perf_counter()
    for r in range(0, rows, tile):
        for c in range(0, cols, tile):
            tiles = np.ascontiguousarray(stack[None, :, r : r + tile, c : c + tile])
            np.argmax(engine.predict(tiles), 1)
    return time.perf_counter() - start


PEAK_OF_CHILDREN = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
    "capture_output=True, text=True); sys.stdout.write(r.stderr); "
    "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.exit(r.returncode)"
)


def run_module(bundle, bands, **options):
    """Seconds, peak RSS of any process of the run (bytes), messages."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PEAK_OF_CHILDREN]
        + module("i.ann.classify")
        + ["input=" + ",".join(bands), "model=" + bundle, "output=classified"]
        + ["{}={}".format(k, v) for k, v in options.items()]
        + ["--overwrite", "--verbose"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(result.stdout[-3000:])
    peak = int(result.stdout.rsplit("PEAK", 1)[1].split()[0]) * 1024
    return seconds, peak, result.stdout


def engine_line(messages):
    found = re.search(r"^Engine: (.*)$", messages, re.M)
    return found.group(1) if found else ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OneWorkerCluster:
    """A real `dask scheduler` and one `dask worker` on 127.0.0.1."""

    def __enter__(self):
        from distributed import Client

        self.address = "tcp://127.0.0.1:{}".format(free_port())
        python_path = subprocess.check_output(
            ["grass", "--config", "python_path"], text=True
        ).strip()
        env = {k: v for k, v in os.environ.items() if k not in ("GISRC",)}
        env["PYTHONPATH"] = os.pathsep.join([python_path, os.path.join(REPO, "lib")])
        common = dict(
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port = self.address.rsplit(":", 1)[1]
        self.processes = [
            subprocess.Popen(
                ["dask", "scheduler", "--host", "127.0.0.1", "--port", port]
                + ["--no-dashboard"],
                **common,
            )
        ]
        self.processes.append(
            subprocess.Popen(
                ["dask", "worker", self.address, "--host", "127.0.0.1"]
                + ["--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                **common,
            )
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(self.address, timeout=5) as client:
                    client.wait_for_workers(1, timeout=60)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def __exit__(self, *exc):
        import signal

        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)


def worker_peak(messages):
    """Peak memory of the block processes, from the job's verbose summary."""
    # GRASS wraps long messages: match with the line breaks taken out.
    found = re.search(r"peak memory of a process (\d+) MB", " ".join(messages.split()))
    return int(found.group(1)) if found else None


def main():
    from iann.grass.bands import read_band_stack
    from iann.grass.rasters import refresh_region
    from iann.predict.engines import KerasEngine, OnnxRuntimeEngine, OpenVinoEngine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--networks", default="fcn-32,fcn-64,unet-32")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--no-blocks", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the block path, its runs interleaved (median, range)",
    )
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    cells = args.size**2
    shape = "{0} x {0}".format(args.size)
    engine_rows, block_rows, exports = [], [], []

    def show(row):
        # Printed as measured too: the whole run takes an hour on 2 cores.
        print(" | ".join(str(x) for x in row), flush=True)

    with grass_session() as tmp:
        bands = make_bands(args.size)
        refresh_region()
        six, six_bands = read_band_stack(bands) / np.float32(100.0), bands
        stack, bands = six[:5], bands[:5]
        for network in [n for n in args.networks.split(",") if n]:
            bundle = os.path.join(tmp, network)
            if network == "csmask":
                import_csmask(bundle)
                onnx = os.path.join(bundle, "model.onnx")
                floor = None
                for label, engine in (
                    ("ONNX Runtime, in memory", OnnxRuntimeEngine(onnx, threads)),
                    ("OpenVINO, in memory", OpenVinoEngine(onnx, threads)),
                ):
                    seconds = fixed_size_in_memory(engine.predict, six, 256, 26)
                    floor = floor or seconds
                    row = [network, label, "{:.1f}".format(seconds)]
                    row += ["{:.0f}".format(cells / seconds)]
                    row += ["{:.2f}".format(floor / seconds), ""]
                    engine_rows.append(row)
                    show(row)
                for name in ("onnx", "openvino"):
                    seconds, peak, _messages = run_module(
                        bundle, six_bands, engine=name, block_size=8192
                    )
                    row = [network, "i.ann.classify engine=" + name]
                    row += ["{:.1f}".format(seconds), "{:.0f}".format(cells / seconds)]
                    row += [
                        "{:.2f}".format(floor / seconds),
                        "{:.0f}".format(peak / 2**20),
                    ]
                    engine_rows.append(row)
                    show(row)
                continue
            model, metadata = make_bundle(bundle, network)
            exports.append([network, "{:.1f}".format(metadata.onnx["export_seconds"])])
            onnx = os.path.join(bundle, "model.onnx")
            floor = None
            for label, engine in (
                ("TensorFlow predict, in memory", KerasEngine(model)),
                ("ONNX Runtime, in memory", OnnxRuntimeEngine(onnx, threads)),
                ("OpenVINO, in memory", OpenVinoEngine(onnx, threads)),
            ):
                seconds = in_memory(engine, stack, args.tile_size)
                floor = floor or seconds
                row = [network, label, "{:.1f}".format(seconds)]
                row += ["{:.0f}".format(cells / seconds)]
                row += ["{:.2f}".format(floor / seconds), ""]
                engine_rows.append(row)
                show(row)
                del engine
            # model.onnx as Deepness runs it: i.ann's engines make its
            # height and width free again instead (onnx_export.engine_model).
            predict, size = onnx_session(onnx, threads)
            seconds = fixed_size_in_memory(predict, stack, size, metadata.margin)
            row = [network, "ONNX Runtime, in memory, model.onnx's fixed tiles"]
            row += ["{:.1f}".format(seconds), "{:.0f}".format(cells / seconds)]
            row += ["{:.2f}".format(floor / seconds), ""]
            engine_rows.append(row)
            show(row)
            for name in ("keras", "onnx", "openvino"):
                seconds, peak, _messages = run_module(
                    bundle,
                    bands,
                    engine=name,
                    tile_size=args.tile_size,
                    block_size=8192,
                )
                row = [network, "i.ann.classify engine=" + name]
                row += ["{:.1f}".format(seconds), "{:.0f}".format(cells / seconds)]
                row += ["{:.2f}".format(floor / seconds), "{:.0f}".format(peak / 2**20)]
                engine_rows.append(row)
                show(row)
        if not args.no_blocks:
            bundle = os.path.join(tmp, "fcn-32")
            if not os.path.isdir(bundle):
                make_bundle(bundle, "fcn-32")
            runs = [
                ("1 process, one block", {"block_size": 8192}),
                (
                    "1 process, blocks of {}".format(args.block_size),
                    {"block_size": args.block_size},
                ),
                ("1 Dask worker (scheduler=)", {"block_size": args.block_size}),
                (
                    "nprocs=2 (LocalCluster)",
                    {"block_size": args.block_size, "nprocs": 2},
                ),
            ]
            # Rounds of every run in turn: a slower spell of a shared
            # machine falls on all of them, not on one.
            measured = {label: [] for label, _options in runs}
            for _round in range(args.repeat):
                for label, options in runs:
                    dask = label.startswith("1 Dask")
                    with OneWorkerCluster() if dask else nullcontext() as cluster:
                        if cluster is not None:
                            options = dict(options, scheduler=cluster.address)
                        seconds, peak, messages = run_module(
                            bundle, bands, tile_size=args.tile_size, **options
                        )
                    measured[label].append((seconds, peak, messages))
                    show([label, "{:.1f}".format(seconds)])
            one = float(np.median([m[0] for m in measured[runs[0][0]]]))
            for label, _options in runs:
                times = [m[0] for m in measured[label]]
                seconds = float(np.median(times))
                peak = max(m[1] for m in measured[label])
                messages = measured[label][-1][2]
                row = [
                    label,
                    "{:.1f}".format(seconds),
                    "{:.1f}-{:.1f}".format(min(times), max(times)),
                    "{:.0f}".format(cells / seconds),
                ]
                row += ["{:.2f}".format(one / seconds), "{:.0f}".format(peak / 2**20)]
                row += [worker_peak(messages) or "", engine_line(messages)]
                block_rows.append(row)
    title = "\nEngines, {} region, 5 bands, 7 classes, tiles of {} cells, {} cores\n"
    print(title.format(shape, args.tile_size, threads))
    print_table(
        ["network", "run", "seconds", "cells/s", "x first run", "peak RSS (MB)"],
        engine_rows,
    )
    print("\nSeconds to export model.onnx (at the end of training)\n")
    print_table(["network", "seconds"], exports)
    if block_rows:
        print(
            "\nBlock path, fcn-32, engine=auto, {} region, median of {} "
            "rounds\n".format(shape, args.repeat)
        )
        print_table(
            [
                "run",
                "seconds",
                "range",
                "cells/s",
                "x 1 process, one block",
                "peak RSS, any process (MB)",
                "peak per block process (MB)",
                "engine",
            ],
            block_rows,
        )


if __name__ == "__main__":
    main()
