#!/usr/bin/env python3
"""The job's own machinery at scale: everything of i.ann.classify but the network.

On a synthetic region of `--cells` cells (1 G by default: 32768 x 32768)
of five 8-bit bands, as an orthophoto with a height band would give, made
by r.mapcalc (the disk it takes is printed; everything is removed at the
end), with a network whose cost is small (bench/pointwise_architecture.py:
one 1 x 1 convolution, read with the fcn's margin so that the reads are
those of a real job), in `--rounds` interleaved rounds (this machine's
speed varies; each round's runs are compared with that round's floor):

1. the machine's floor for the same work: r.mapcalc reading the five
   bands and writing one CELL map (GRASS's own tools);
2. i.ann.classify, in one process and with nprocs=2, for each number of
   rows of a block (`--block-sizes`, the columns as memory allows: the
   default), blocks of 2048 x 2048 cells (the shape of earlier versions)
   and blocks of 2048 rows as wide as the region (memory=4096): the
   machinery's rate (cells a second outside the network, per process,
   and as a share of the floor), the merge's time and share (the outputs
   finished: ranges, metadata, renaming), the time to plan, the peak
   memory of a process;

once:

3. the fixed cost of a block: 1024 x 1024 cells in 256 blocks of 64 x 64
   against one block, the same tiles of 64 cells in both, the difference
   in time spent in blocks over 255; a run interrupted by Ctrl-C halfway
   and run again: the time to find the blocks done and go on (resume);
4. jobs of Wallonia's size (270 G cells) planned, their maps made, a
   marker for every block, found again as by a resumed run, and
   finished, without classifying a cell, with today's default blocks and
   with 64,009 blocks of 2048 x 2048 cells: what grows with the number of
   blocks, measured at that number; and Dask's cost of a block (no-op
   tasks on a LocalCluster);
5. fcn-32's rate on this machine (the module, one process), for the CPU
   row of the cost model;

then the cost model: Wallonia (270 G cells x 5 bands) on 1, 8 and 64 GPU
workers at 20 M px/s each, and on 64 CPU workers as fast as this machine,
with the hours in the network, in the machinery and in the serial steps.

With `--compare DIR` (another checkout of i.ann, e.g. an earlier commit
made with `git worktree add DIR <commit>`), its i.ann.classify runs the
one-process job of 2048-cell blocks too, in every round, on the same data.

Run: python3 bench/bench_scale.py [--cells 1073741824]
     [--block-sizes 1024,2048,4096,8192] [--nprocs 1,2] [--rounds 2]
     [--folder DIR] [--compare DIR]
(`--cells 16000000 --block-sizes 512,1024 --rounds 1` for a quick look.)
"""

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time

from common import REPO, grass_session, module, print_table

BANDS = 5
CLASSES = 7
WALLONIA_CELLS = 270e9
GPU_RATE = 20e6
DEFAULT_ROWS = 2048
PEAK_OF_CHILDREN = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
    "capture_output=True, text=True); sys.stdout.write(r.stderr); "
    "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.exit(r.returncode)"
)


def disk_usage(path):
    return int(subprocess.check_output(["du", "-sb", path]).split()[0])


def make_bands(side, prefix="band"):
    """Five 8-bit bands of side x side cells, in one r.mapcalc run."""
    import grass.script as gs

    gs.run_command("g.region", n=side, s=0, e=side, w=0, res=1)
    names = ["{}{}".format(prefix, b) for b in range(BANDS)]
    expressions = [
        "{} = int(127 + 100 * sin(x() / (5 + {b})) * cos(y() / (7 + {b})))".format(
            name, b=b
        )
        for b, name in enumerate(names)
    ]
    gs.write_command(
        "r.mapcalc", file="-", stdin="\n".join(expressions), overwrite=True, quiet=True
    )
    return names


def fcn_margin():
    """The margin i.ann reads around the fcn's tiles."""
    from iann.nn.architectures import build_model
    from iann.nn.receptive_field import receptive_field
    from iann.predict.tiling import tiling_margin

    model = build_model("fcn", (None, None, BANDS), CLASSES, filters=4)
    field, _ = receptive_field(model, BANDS, 1)
    return tiling_margin(field, 1)


def make_bundle(folder, architecture, margin=None, **params):
    """A bundle of an untrained network (speed does not depend on weights)."""
    from iann.formats.bundle import BundleMetadata
    from iann.nn.architectures import build_model
    from iann.nn.receptive_field import receptive_field
    from iann.predict.tiling import tiling_margin
    from iann.train.saving import save_bundle

    model = build_model(architecture, (None, None, BANDS), CLASSES, **params)
    field, _ = receptive_field(model, BANDS, 1)
    metadata = BundleMetadata(
        architecture=architecture,
        parameters=params,
        size_multiple=1,
        bands=[{"name": "band{}".format(b)} for b in range(BANDS)],
        classes=[
            {"index": i, "value": i + 1, "label": str(i + 1), "color": None}
            for i in range(CLASSES)
        ],
        normalisation={"mean": [127.0] * BANDS, "std": [60.0] * BANDS},
        receptive_field=field,
        margin=tiling_margin(field, 1) if margin is None else margin,
    )
    if os.path.isfile(architecture):
        metadata.architecture_file = architecture
    os.makedirs(folder)
    metadata, problem = save_bundle(folder, model, metadata)
    if problem:
        sys.exit("{}: {}".format(architecture, problem))


def command(bundle, bands, output, checkout=None, **options):
    script = module("i.ann.classify")
    if checkout:
        script[-1] = os.path.join(checkout, "i.ann.classify", "i.ann.classify.py")
    return (
        [sys.executable, "-c", PEAK_OF_CHILDREN]
        + script
        + ["input=" + ",".join(bands), "model=" + bundle, "output=" + output]
        + ["{}={}".format(k, v) for k, v in options.items()]
        + ["--overwrite", "--verbose"]
    )


def markers(output_folder):
    folder = os.path.join(output_folder, "i.ann_jobs")
    if not os.path.isdir(folder):
        return 0
    return sum(
        len([n for n in os.listdir(os.path.join(folder, d)) if n.endswith(".json")])
        for d in os.listdir(folder)
        if d.startswith("blocks_")
    )


def parse(messages):
    """The job's verbose figures: its blocks, steps, network seconds, peaks."""
    text = " ".join(messages.split())
    found = {}
    blocks = re.search(r"in (\d+) blocks of up to (\d+)(?: x (\d+))? cells", text)
    if blocks:
        found["n"] = int(blocks.group(1))
        found["shape"] = "{} x {}".format(
            blocks.group(2), blocks.group(3) or blocks.group(2)
        )
    steps = re.search(
        r"plan ([\d.]+) s, maps made or found ([\d.]+) s, blocks ([\d.]+) s, "
        r"outputs finished ([\d.]+) s",
        text,
    )
    if steps:
        found.update(
            zip(("plan", "start", "blocks", "finish"), map(float, steps.groups()))
        )
    merged = re.search(r"Blocks merged into the outputs in ([\d.]+) s", text)
    if merged:  # an earlier version's merge (--compare)
        found["finish"] = float(merged.group(1))
    times = re.search(
        r"Time in blocks ([\d.]+) s, of which the network ([\d.]+) s", text
    )
    if times:
        found["in_blocks"], found["network"] = map(float, times.groups())
    peak = re.search(r"peak memory of a process (\d+) MB", text)
    if peak:
        found["worker_peak"] = int(peak.group(1))
    resumed = re.search(r"(\d+) of (\d+) blocks already classified", text)
    if resumed:
        found["resumed"] = int(resumed.group(1))
    found["peak"] = int(messages.rsplit("PEAK", 1)[1].split()[0]) // 1024
    return found


def run_module(args_list):
    started = time.perf_counter()
    result = subprocess.run(args_list, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(result.stdout[-3000:])
    figures = parse(result.stdout)
    figures["module"] = seconds
    return figures


def interrupted_then_resumed(args_list, mapset_folder, n_blocks):
    """Run, Ctrl-C once half the blocks are done, run again: both runs' figures."""
    started = time.perf_counter()
    process = subprocess.Popen(
        args_list,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    while markers(mapset_folder) < max(1, n_blocks // 2):
        if process.poll() is not None:
            sys.exit("the run ended before half its blocks: " + process.stdout.read())
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate()
    first = time.perf_counter() - started
    second = run_module(args_list)
    second["first_run"] = first
    return second


def wallonia_plan(bands, bundle, block_size, block_cols=None):
    """Plan, maps, markers, resume and finish of a Wallonia-sized job, no cell run."""
    import grass.script as gs

    from iann.grass.rasters import refresh_region
    from iann.jobs.block import BlockResult, mark_done
    from iann.jobs.classify import ClassifyRequest, combined_ranges, plan
    from iann.jobs.store import OutputLock, end_job, start_job, block_results

    side = math.isqrt(int(WALLONIA_CELLS))
    side -= side % 2048
    gs.run_command("g.region", n=side, s=0, e=side, w=0, res=1)
    os.environ["GRASS_REGION"] = gs.region_env()
    refresh_region()
    times = {}
    try:
        request = ClassifyRequest(
            bands=bands,
            bundle=bundle,
            output="wallonia",
            block_size=block_size,
            block_cols=block_cols,
        )
        started = time.perf_counter()
        job_plan = plan(request, [])
        times["plan"] = time.perf_counter() - started
        job = job_plan.job
        with OutputLock("wallonia") as lock:
            started = time.perf_counter()
            start_job(job, lock)
            times["maps"] = time.perf_counter() - started
            started = time.perf_counter()
            for block in job_plan.blocks:
                mark_done(
                    job,
                    BlockResult(
                        index=block.index,
                        worker="w",
                        cells=block.core.cells,
                        mapped=[block.core.cells] + [0] * (CLASSES - 1),
                        ranges=[[1, 1]],
                        seconds=0.0,
                        network_seconds=0.0,
                        engine_loads=1,
                    ),
                )
            times["markers"] = time.perf_counter() - started
            started = time.perf_counter()
            done = start_job(job, lock)
            results = block_results(job, sorted(done))
            times["resume"] = time.perf_counter() - started
            started = time.perf_counter()
            job.classes.write_range(*combined_ranges(results, 1)[0])
            end_job(job, lock)
            times["finish"] = time.perf_counter() - started
        times["blocks"] = len(job_plan.blocks)
        times["shape"] = "{} x {}".format(job_plan.block_size, job_plan.block_cols)
    finally:
        del os.environ["GRASS_REGION"]
        refresh_region()
    return times


def dask_cost_per_task(tasks=20000):
    """Seconds a no-op task costs on a LocalCluster of two one-thread workers."""
    import logging

    from distributed import Client, LocalCluster, as_completed

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        started = time.perf_counter()
        futures = [
            client.submit(abs, i, key="noop-{}".format(i), pure=False)
            for i in range(tasks)
        ]
        for _future in as_completed(futures):
            pass
        return (time.perf_counter() - started) / tasks


def hours(seconds):
    return "{:.2f}".format(seconds / 3600)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=float, default=2**30)
    parser.add_argument("--block-sizes", default="1024,2048,4096,8192")
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--folder", default=None, help="where the project is made")
    parser.add_argument("--compare", default=None, help="another checkout of i.ann")
    args = parser.parse_args()
    side = math.isqrt(int(args.cells))
    cells = side * side
    configs = [
        (
            "{} rows, {} process{}".format(rows, nprocs, "es" if nprocs > 1 else ""),
            {"block_size": rows, "nprocs": nprocs},
            None,
        )
        for rows in (int(b) for b in args.block_sizes.split(","))
        for nprocs in (int(n) for n in args.nprocs.split(","))
    ]
    configs.append(("2048 x 2048", {"block_size": "2048,2048", "nprocs": 1}, None))
    configs.append(
        (
            "2048 rows, whole width",
            {"block_size": 2048, "memory": 4096, "nprocs": 1},
            None,
        )
    )
    if args.compare:
        configs.append(
            (
                "earlier checkout, 2048 x 2048, 1 process",
                {"block_size": 2048},
                args.compare,
            )
        )
    runs = {label: [] for label, _options, _checkout in configs}
    with grass_session(folder=args.folder) as tmp:
        import grass.script as gs

        env = gs.gisenv()
        mapset_folder = os.path.join(
            env["GISDBASE"], env["LOCATION_NAME"], env["MAPSET"]
        )
        started = time.perf_counter()
        bands = make_bands(side)
        made = time.perf_counter() - started
        data_bytes = disk_usage(mapset_folder)
        print(
            "{0} x {0} cells x {1} bands made in {2:.0f} s, {3:.2f} GB on disk".format(
                side, BANDS, made, data_bytes / 1e9
            ),
            flush=True,
        )
        pointwise = os.path.join(tmp, "pointwise")
        make_bundle(
            pointwise,
            os.path.join(REPO, "bench", "pointwise_architecture.py"),
            margin=fcn_margin(),
        )
        floors = []
        for round_ in range(args.rounds):
            started = time.perf_counter()
            gs.mapcalc(
                "floor = int({})".format(" + ".join(bands)), overwrite=True, quiet=True
            )
            floors.append(cells / (time.perf_counter() - started))
            gs.run_command("g.remove", type="raster", name="floor", flags="f")
            print("round {}: floor {:.2f} M cells/s".format(round_, floors[-1] / 1e6))
            for label, options, checkout in configs:
                figures = run_module(
                    command(pointwise, bands, "classes", checkout=checkout, **options)
                )
                figures["floor"] = floors[-1]
                figures["nprocs"] = options.get("nprocs", 1)
                runs[label].append(figures)
                print(label, json.dumps(figures), flush=True)
                gs.run_command(
                    "g.remove", type="raster", name="classes", flags="f", quiet=True
                )
        rows = min(int(b) for b in args.block_sizes.split(","))
        resumed = interrupted_then_resumed(
            command(pointwise, bands, "classes", block_size=rows, nprocs=1),
            mapset_folder,
            runs["{} rows, 1 process".format(rows)][0]["n"],
        )
        print("resumed", json.dumps(resumed), flush=True)
        gs.run_command("g.remove", type="raster", name="classes", flags="f", quiet=True)
        fixed = fixed_cost_per_block(pointwise)
        print("fixed cost of a block: {:.1f} ms".format(fixed * 1000), flush=True)
        wallonia = [
            wallonia_plan(bands, pointwise, DEFAULT_ROWS),
            wallonia_plan(bands, pointwise, 2048, 2048),
        ]
        print(json.dumps(wallonia), flush=True)
        per_task = dask_cost_per_task()
        print("Dask: {:.2f} ms a no-op task".format(per_task * 1000), flush=True)
        # On bands of the region's size (see fixed_cost_per_block).
        fcn_bands = make_bands(2048, prefix="fcn_band")
        fcn = os.path.join(tmp, "fcn32")
        make_bundle(fcn, "fcn", filters=32)
        fcn_figures = run_module(command(fcn, fcn_bands, "fcn"))
        fcn_rate = 2048 * 2048 / fcn_figures["in_blocks"]
        print("fcn-32: {:.2f} M cells/s in blocks".format(fcn_rate / 1e6), flush=True)
    report(
        runs,
        cells,
        side,
        data_bytes,
        floors,
        resumed,
        fixed,
        wallonia,
        per_task,
        fcn_rate,
    )


def median(values):
    return statistics.median(values)


def report(
    runs, cells, side, data_bytes, floors, resumed, fixed, wallonia, per_task, fcn_rate
):
    """The tables: runs, resume, fixed cost, Wallonia's plan, the cost model."""
    print(
        "\n{0} x {0} cells ({1:.2f} G) x {2} 8-bit bands ({3:.2f} GB), a 1 x 1 "
        "network read with the fcn's margin, {4} cores, median of {5} rounds; "
        "floor (r.mapcalc, 5 bands -> 1 CELL map): {6:.1f} M cells/s\n".format(
            side,
            cells / 1e9,
            BANDS,
            data_bytes / 1e9,
            len(os.sched_getaffinity(0)),
            len(floors),
            median(floors) / 1e6,
        )
    )
    table = []
    rates = {}
    for label, figures in runs.items():
        # Per process: the blocks' seconds are summed over the processes.
        machinery = [cells / (f["in_blocks"] - f["network"]) for f in figures]
        share = [rate / f["floor"] for rate, f in zip(machinery, figures)]
        rates[label] = median(machinery)
        module_seconds = median([f["module"] for f in figures])
        finish = median([f["finish"] for f in figures])
        table.append(
            [
                label,
                figures[0]["nprocs"],
                figures[0].get("n", ""),
                figures[0].get("shape", ""),
                "{:.0f}".format(module_seconds),
                "{:.2f}".format(cells / module_seconds / 1e6),
                "{:.2f}".format(rates[label] / 1e6),
                "{:.2f}".format(median(share)),
                "{:.2f} ({:.2%})".format(finish, finish / module_seconds),
                "{:.2f}".format(
                    median([f.get("plan", 0) + f.get("start", 0) for f in figures])
                ),
                max(f.get("worker_peak", 0) for f in figures),
            ]
        )
    print_table(
        [
            "blocks",
            "nprocs",
            "number",
            "rows x cols",
            "module s",
            "M cells/s",
            "machinery M cells/s a process",
            "x floor",
            "merge s (share)",
            "plan s",
            "peak MB a process",
        ],
        table,
    )
    print(
        "\nResume: interrupted with Ctrl-C after {:.0f} s; the rerun found {} of {} "
        "blocks done and went on in {:.2f} s (plan {:.2f} s)".format(
            resumed["first_run"],
            resumed.get("resumed", 0),
            resumed.get("n", "?"),
            resumed["start"],
            resumed["plan"],
        )
    )
    print(
        "Fixed cost of a block (256 blocks of 64 x 64 cells against one block of the "
        "same tiles): {:.1f} ms".format(fixed * 1000)
    )
    print("\nWallonia-sized jobs, no cell classified:\n")
    print_table(
        [
            "blocks",
            "number",
            "plan s",
            "maps made s",
            "markers written s (by the workers)",
            "found again and read s",
            "finished s",
        ],
        [
            [
                w["shape"],
                w["blocks"],
                "{:.1f}".format(w["plan"]),
                "{:.2f}".format(w["maps"]),
                "{:.1f}".format(w["markers"]),
                "{:.1f}".format(w["resume"]),
                "{:.2f}".format(w["finish"]),
            ]
            for w in wallonia
        ],
    )
    print("Dask: {:.2f} ms a block (no-op tasks)".format(per_task * 1000))
    default = "{} rows, 1 process".format(DEFAULT_ROWS)
    machinery_rate = rates[default] if default in rates else max(rates.values())
    plan = wallonia[0]
    n_blocks = plan["blocks"]
    serial = plan["plan"] + plan["maps"] + plan["resume"] + plan["finish"]
    scheduling = per_task * n_blocks
    print(
        "\nCost model: Wallonia, {:.0f} G cells x {} bands, {} blocks of {} "
        "cells; machinery {:.2f} M cells/s a process (blocks of {} rows, one "
        "process, measured above); serial steps {:.0f} s (plan, maps, resume, "
        "finish) and Dask's scheduling {:.0f} s (concurrent with the blocks)\n".format(
            WALLONIA_CELLS / 1e9,
            BANDS,
            n_blocks,
            plan["shape"],
            machinery_rate / 1e6,
            DEFAULT_ROWS,
            serial,
            scheduling,
        )
    )
    model_rows = []
    for label, workers, rate in (
        ("1 GPU, 20 M px/s", 1, GPU_RATE),
        ("8 GPUs", 8, GPU_RATE),
        ("64 GPUs", 64, GPU_RATE),
        ("64 CPU workers like this machine (fcn-32)", 64, fcn_rate),
    ):
        network = WALLONIA_CELLS / (workers * rate)
        machinery = WALLONIA_CELLS / (workers * machinery_rate)
        feeders = math.ceil(rate / machinery_rate)
        one_each = network + machinery + serial
        with_feeders = max(network, machinery / feeders, scheduling) + serial
        model_rows.append(
            [
                label,
                hours(network),
                hours(machinery),
                hours(serial),
                hours(one_each),
                feeders,
                hours(with_feeders),
                "{:.1%}".format(serial / with_feeders),
            ]
        )
    print_table(
        [
            "workers",
            "network h",
            "machinery h (one process a worker)",
            "serial steps h",
            "total h, one process a worker",
            "processes a worker to keep up",
            "total h with them",
            "serial share",
        ],
        model_rows,
    )


def fixed_cost_per_block(bundle, side=1024, block_size=64):
    """Seconds a block costs beyond its cells (see the module's docstring).

    On bands of the region's own size: GRASS reads a whole row of a map
    for any part of it, so blocks of a region narrower than the maps would
    count the rows' other cells as the blocks' cost.
    """
    import grass.script as gs

    bands = make_bands(side, prefix="fixed_band")
    times = {}
    for size in (block_size, side):
        figures = run_module(
            command(
                bundle,
                bands,
                "fixed",
                block_size="{0},{0}".format(size),
                tile_size=block_size,
            )
        )
        times[size] = figures["in_blocks"]
        gs.run_command("g.remove", type="raster", name="fixed", flags="f", quiet=True)
    n_blocks = (side // block_size) ** 2
    return (times[block_size] - times[side]) / (n_blocks - 1)


if __name__ == "__main__":
    main()
