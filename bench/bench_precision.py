#!/usr/bin/env python3
"""Speed and accuracy of the reduced precisions (int8, bfloat16) on the CPU.

In one run, on this machine's CPU (its model, clock and the flags that
decide int8 and bfloat16 are printed with the tables):

1. The North Carolina scene (bench/accuracy_nc.py's project and spatial
   splits): for the bundles of one recipe (seeds x splits; trained when
   missing, as accuracy_nc.py trains them), `i.ann.train export=
   inference_precision=int8,bfloat16` on each bundle's own dataset (the
   int8 model calibrated on its training patches, the checks on its
   validation patches), then the whole scene classified in memory by the
   tile pipeline in float32, bfloat16 and int8 on each engine: kappa of
   the held-out blocks (mean +- sd over the runs, and the largest drop
   from float32), the share of the scene's cells whose class agrees with
   float32's, and how many bundles passed their own check.
2. A region of SIZE x SIZE cells with five bands, for fcn with 32 and 64
   filters and unet with 32 (untrained weights, as bench_classify.py: speed
   does not depend on them): a dataset of the region (i.ann.patches, a
   reference cut from band 0) to calibrate and check on, then
   - the network alone on the cells in memory, tiles of TILE cells, per
     engine and precision: seconds, cells/s, multiply-adds per cell
     (counted on model.onnx's graph), achieved GOP/s (2 per multiply-add)
     and its share of the CPU's peak for that precision;
   - the whole module, i.ann.classify engine= precision=, one process:
     seconds, cells/s, ratio to the float32 OpenVINO run, peak memory,
     and the class agreement with float32's map on the region.
   A precision is timed whatever its check said (the check's verdict is a
   column): the timed runs use a copy of the bundle whose checks are
   marked passed, so that i.ann.classify does not fall back to float32.

The CPU's peak: cores x operations per core and cycle x clock, with the
operations per cycle of CPU_KINDS for the kind found (by its flags), for
float32 (FMA), bfloat16 (dot products) and int8 (VNNI); the clock is the
one /proc/cpuinfo reports (no boost counted).

Run: python3 bench/bench_precision.py [--size 4000] [--tile-size 1024]
     [--networks fcn-32,fcn-64,unet-32] [--work ~/iann-accuracy]
     [--recipe default] [--seeds 1,2,3] [--splits 0,1] [--no-nc] [--no-region]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from common import grass_session, module, print_table

# Operations per core and cycle: (float32, bfloat16, int8). Zen 4 (AVX-512
# on 256-bit units; the first AMD with AVX512_BF16): two 256-bit FMA pipes
# (2 x 8 lanes x 2), VDPBF16PS (2 x 16 x 2), VPDPBUSD (2 x 32 x 2). Intel
# with AVX-512 and two FMA units: 64, 128, 256. AVX2 alone: 32, -, 64
# (VPMADDUBSW, 16-bit sums). Sapphire Rapids' AMX is far above these and
# is not counted.
CPU_KINDS = (
    ("AMD Zen 4 (AVX-512 on 256-bit units)", {"avx512_bf16"}, (32, 64, 128)),
    ("AVX-512 with two FMA units", {"avx512f"}, (64, 128, 256)),
    ("AVX2 and FMA", {"avx2", "fma"}, (32, None, 64)),
)
RUNS = (
    ("openvino", "float32"),
    ("openvino", "bfloat16"),
    ("openvino", "int8"),
    ("onnx", "float32"),
    ("onnx", "int8"),
)


def cpu_description():
    """CPU model, the flags that matter, clock (GHz), cores, peak per cycle."""
    from iann.predict.precision import cpu_kind

    cpu = cpu_kind()
    clock = 0.0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("cpu mhz"):
                clock = float(line.split(":")[1]) / 1000
                break
    flags = set(cpu["flags"])
    for name, needs, per_cycle in CPU_KINDS:
        if needs <= flags:
            break
    else:
        name, per_cycle = "unknown", (None, None, None)
    cores = len(os.sched_getaffinity(0))
    return (
        cpu,
        clock,
        cores,
        name,
        dict(zip(("float32", "bfloat16", "int8"), per_cycle)),
    )


def multiply_adds_per_cell(onnx_path, size=256):
    """Multiply-adds of Conv and ConvTranspose nodes per input cell,
    counted on model.onnx's graph with shapes inferred at `size` cells."""
    import onnx

    from iann.predict.onnx_export import set_spatial_dimensions, without_nodata_fill

    model = onnx.load(onnx_path)
    without_nodata_fill(model)
    set_spatial_dimensions(model, size)
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(model.graph.value_info)
        + list(model.graph.output)
        + list(model.graph.input)
    }
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = weights[node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            total += out[2] * out[3] * w[0] * w[1] * w[2] * w[3]
        else:  # every input cell spreads over the kernel
            inp = shapes[node.input[0]]
            total += inp[2] * inp[3] * w[0] * w[1] * w[2] * w[3] // group
    return total / size**2


def precision_engine(bundle, name, precision, threads):
    from iann.formats.bundle import INT8_FILE, ONNX_FILE
    from iann.predict.engines import ENGINE_CLASSES

    path = os.path.join(bundle, INT8_FILE if precision == "int8" else ONNX_FILE)
    return ENGINE_CLASSES[name](path, threads, bfloat16=precision == "bfloat16")


def runs_here(native_bfloat16):
    return [r for r in RUNS if r[1] != "bfloat16" or native_bfloat16]


def add_precisions(bundle, patches):
    subprocess.run(
        module("i.ann.train")
        + [
            "export=" + bundle,
            "input=" + patches,
            "inference_precision=int8,bfloat16",
            "--overwrite",
            "--quiet",
        ],
        check=True,
    )
    with open(os.path.join(bundle, "metadata.json")) as f:
        return json.load(f)["reduced_precision"]["checks"]


def verdict(checks, engine, precision):
    found = [c for c in checks if (c["engine"], c["precision"]) == (engine, precision)]
    if precision == "float32":
        return ""
    if not found:
        return "not checked"
    check = found[-1]
    return "{} ({:.2%}, kappa {:+.4f})".format(
        "passed" if check["passed"] else "failed",
        check["agreement"],
        check["kappa"] - check["kappa_float32"],
    )


def scene_classes(bundle, engine, bands):
    """The scene's classes (values) by the tile pipeline, in memory."""
    from iann.formats.bundle import read_bundle_metadata
    from iann.nn.normalise import bundle_transform
    from iann.predict.pipeline import (
        ArraySink,
        ArraySource,
        PredictionSettings,
        classify_block,
    )
    from iann.predict.tiling import Block, Window

    metadata = read_bundle_metadata(bundle)
    mean, std = bundle_transform(metadata)
    values = tuple(c["value"] for c in metadata.classes)
    settings = PredictionSettings(
        mean=mean,
        std=std,
        values=values,
        margin=int(metadata.margin),
        multiple=int(metadata.size_multiple),
    )
    rows, cols = bands.shape[1:]
    whole = Window(0, rows, 0, cols)
    sink = ArraySink(rows, cols, len(values))
    classify_block(
        engine, settings, ArraySource(bands), sink, Block(0, whole, whole), 1024
    )
    return sink.classes


def nc_part(args, threads, native_bfloat16):
    """Kappa of the held-out blocks and agreement with float32, per run."""
    import accuracy_nc as nc
    from sklearn.metrics import cohen_kappa_score

    from iann.grass.bands import read_band_stack, read_reference

    session = nc.grass_project(args.work)
    measured = {run: [] for run in runs_here(native_bfloat16)}
    try:
        bands = read_band_stack(nc.BANDS)
        for split in args.splits:
            nc.make_split(split)
            heldout = read_reference(nc.split_maps(split)[1])
            for seed in args.seeds:
                name = os.path.join(
                    "split{}".format(split),
                    "{}_s{}_split{}".format(args.recipe, seed, split),
                )
                folder = os.path.join(args.work, name)
                if not os.path.isfile(os.path.join(folder, "model", "metadata.json")):
                    patch_options, train_options = nc.RECIPES[args.recipe]
                    nc.ann_row(
                        args.work,
                        name,
                        nc.RECIPE_ARCHITECTURES.get(args.recipe, "fcn"),
                        nc.BANDS,
                        patch_options,
                        train_options,
                        split,
                        seed,
                    )
                bundle = os.path.join(folder, "model_precisions")
                shutil.rmtree(bundle, ignore_errors=True)
                shutil.copytree(os.path.join(folder, "model"), bundle)
                checks = add_precisions(bundle, os.path.join(folder, "patches"))
                keep = heldout != np.iinfo(np.int32).min
                mapped = None
                reference = None
                for engine_name, precision in measured:
                    engine = precision_engine(bundle, engine_name, precision, threads)
                    classes = scene_classes(bundle, engine, bands)
                    if reference is None:
                        reference = classes
                        mapped = reference != np.iinfo(np.int32).min
                    # Cells mapped, as the accuracy report counts them.
                    both = keep & (classes != np.iinfo(np.int32).min)
                    kappa = cohen_kappa_score(heldout[both], classes[both])
                    measured[(engine_name, precision)].append(
                        {
                            "kappa": kappa,
                            "agreement": float(
                                np.mean(classes[mapped] == reference[mapped])
                            ),
                            "passed": "passed"
                            in verdict(checks, engine_name, precision),
                        }
                    )
                print(
                    "NC split {} seed {}: ".format(split, seed)
                    + ", ".join(
                        "{} {} {:.4f}".format(e, p, m[-1]["kappa"])
                        for (e, p), m in measured.items()
                    ),
                    flush=True,
                )
    finally:
        session.finish()
    rows = []
    base = [m["kappa"] for m in measured[("openvino", "float32")]]
    for (engine_name, precision), runs in measured.items():
        kappas = [m["kappa"] for m in runs]
        drops = [b - k for b, k in zip(base, kappas)]
        rows.append(
            [
                engine_name,
                precision,
                (
                    "{:.4f} +- {:.4f}".format(np.mean(kappas), np.std(kappas, ddof=1))
                    if len(kappas) > 1
                    else "{:.4f}".format(kappas[0])
                ),
                "{:+.4f}".format(max(drops)),
                "{:.2%}".format(min(m["agreement"] for m in runs)),
                (
                    ""
                    if precision == "float32"
                    else "{}/{}".format(sum(m["passed"] for m in runs), len(runs))
                ),
            ]
        )
    return rows, len(base)


def make_dataset(bands, folder):
    """A dataset of the region with a 7-class reference (the networks are
    untrained: the reference is for the checks' kappa only)."""
    import grass.script as gs

    # Seven stripes of columns: every class in every split.
    gs.mapcalc(
        "reference = 1 + int((col() - 1) * 7 / {})".format(gs.region()["cols"]),
        overwrite=True,
        quiet=True,
    )
    subprocess.run(
        module("i.ann.patches")
        + [
            "input=" + ",".join(bands),
            "reference=reference",
            "output=" + folder,
            "size=64",
            "number=400",
            "validation=0.25",
            "seed=1",
            "--quiet",
        ],
        check=True,
    )


def same_band_names(bundle, patches):
    """The bundle's bands named as the dataset names them (with mapsets)."""
    with open(os.path.join(patches, "metadata.json")) as f:
        names = [b["name"] for b in json.load(f)["bands"]]
    path = os.path.join(bundle, "metadata.json")
    with open(path) as f:
        metadata = json.load(f)
    for band, name in zip(metadata["bands"], names):
        band["name"] = name
    with open(path, "w") as f:
        json.dump(metadata, f)


def passed_copy(bundle, folder):
    """A copy of the bundle whose checks are marked passed (timing only)."""
    shutil.copytree(bundle, folder)
    path = os.path.join(folder, "metadata.json")
    with open(path) as f:
        metadata = json.load(f)
    for check in metadata["reduced_precision"]["checks"]:
        check["passed"] = True
    with open(path, "w") as f:
        json.dump(metadata, f)
    return folder


def region_part(args, threads, native_bfloat16, peak_per_cycle, clock):
    from bench_classify import in_memory, make_bands, make_bundle, run_module

    from grass.script import array as garray
    from iann.grass.bands import read_band_stack
    from iann.grass.rasters import refresh_region

    cells = args.size**2
    network_rows, module_rows = [], []
    with grass_session() as tmp:
        bands = make_bands(args.size)[:5]
        refresh_region()
        stack = read_band_stack(bands) / np.float32(100.0)
        patches = os.path.join(tmp, "patches")
        make_dataset(bands, patches)
        for network in args.networks:
            bundle = os.path.join(tmp, network)
            make_bundle(bundle, network)
            same_band_names(bundle, patches)
            checks = add_precisions(bundle, patches)
            timed = passed_copy(bundle, os.path.join(tmp, network + "_timed"))
            macs = multiply_adds_per_cell(os.path.join(bundle, "model.onnx"))
            base = None
            for engine_name, precision in runs_here(native_bfloat16):
                engine = precision_engine(timed, engine_name, precision, threads)
                seconds = in_memory(engine, stack, args.tile_size)
                del engine
                ops = 2 * macs * cells / seconds / 1e9
                per_cycle = peak_per_cycle.get(precision)
                peak = threads * per_cycle * clock if per_cycle else None
                network_rows.append(
                    [
                        network,
                        engine_name,
                        precision,
                        "{:.1f}".format(seconds),
                        "{:,.0f}".format(cells / seconds),
                        "{:,.0f}".format(macs),
                        "{:.1f}".format(ops),
                        "{:.0f}".format(peak) if peak else "",
                        "{:.0%}".format(ops / peak) if peak else "",
                    ]
                )
                print(" | ".join(network_rows[-1]), flush=True)
            for engine_name, precision in runs_here(native_bfloat16):
                seconds, peak_rss, messages = run_module(
                    timed,
                    bands,
                    engine=engine_name,
                    precision=precision,
                    tile_size=args.tile_size,
                    block_size=8192,
                )
                if (
                    "Precision {}".format(precision) not in " ".join(messages.split())
                    and precision != "float32"
                ):
                    sys.exit("{} {}: not used\n{}".format(network, precision, messages))
                classes = np.asarray(garray.array("classified", dtype=np.int32))
                if (engine_name, precision) == ("openvino", "float32"):
                    base, reference = seconds, classes
                module_rows.append(
                    [
                        network,
                        engine_name,
                        precision,
                        "{:.1f}".format(seconds),
                        "{:,.0f}".format(cells / seconds),
                        "{:.2f}".format(base / seconds),
                        "{:.0f}".format(peak_rss / 2**20),
                        "{:.2%}".format(np.mean(classes == reference)),
                        verdict(checks, engine_name, precision),
                    ]
                )
                print(" | ".join(module_rows[-1]), flush=True)
    return network_rows, module_rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--networks", default="fcn-32,fcn-64,unet-32")
    parser.add_argument(
        "--work", default=os.path.expanduser(os.path.join("~", "iann-accuracy"))
    )
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--splits", default="0,1")
    parser.add_argument("--no-nc", action="store_true")
    parser.add_argument("--no-region", action="store_true")
    # Each part runs in a process of its own (one GRASS session each): the
    # rows come back in a JSON file.
    parser.add_argument("--part", choices=("nc", "region"), help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.networks = [n for n in args.networks.split(",") if n]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.splits = [int(s) for s in args.splits.split(",")]
    cpu, clock, threads, kind_name, peak_per_cycle = cpu_description()
    native_bfloat16 = bool({"avx512_bf16", "amx_bf16", "bf16"} & set(cpu["flags"]))
    about = "CPU: {} ({}), {} cores at {:.2f} GHz; flags: {}; peak taken as {}".format(
        cpu["model"],
        kind_name,
        threads,
        clock,
        " ".join(cpu["flags"]),
        ", ".join(
            "{} {} op/cycle/core".format(p, n) for p, n in peak_per_cycle.items() if n
        ),
    )
    if args.part == "nc":
        rows = nc_part(args, threads, native_bfloat16)
    elif args.part == "region":
        rows = region_part(args, threads, native_bfloat16, peak_per_cycle, clock)
    if args.part:
        with open(args.rows_file, "w") as f:
            json.dump(rows, f)
        return
    print(about, flush=True)
    parts = {}
    for part in ("nc", "region"):
        if getattr(args, "no_" + part):
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as rows_file:
            subprocess.run(
                [sys.executable, os.path.abspath(__file__)]
                + sys.argv[1:]
                + ["--part", part, "--rows-file", rows_file.name],
                check=True,
            )
            with open(rows_file.name) as f:
                parts[part] = json.load(f)
    nc_rows, runs = parts.get("nc", (None, 0))
    network_rows, module_rows = parts.get("region", (None, None))
    print("\n" + about)
    if nc_rows:
        print(
            "\nNorth Carolina, held-out blocks, recipe {}, {} bundles (seeds {} x "
            "splits {}), the scene in memory, argmax\n".format(
                args.recipe, runs, args.seeds, args.splits
            )
        )
        print_table(
            [
                "engine",
                "precision",
                "kappa (mean +- sd)",
                "largest kappa drop",
                "least agreement",
                "check passed",
            ],
            nc_rows,
        )
    if network_rows:
        shape = "{0} x {0} x 5".format(args.size)
        print(
            "\nThe network alone, {} region in memory, tiles of {} cells\n".format(
                shape, args.tile_size
            )
        )
        print_table(
            [
                "network",
                "engine",
                "precision",
                "seconds",
                "cells/s",
                "multiply-adds/cell",
                "GOP/s",
                "peak GOP/s",
                "share of peak",
            ],
            network_rows,
        )
        print("\ni.ann.classify, {} region, one process\n".format(shape))
        print_table(
            [
                "network",
                "engine",
                "precision",
                "seconds",
                "cells/s",
                "x float32 OpenVINO",
                "peak RSS (MB)",
                "agreement with float32",
                "check (agreement, kappa change)",
            ],
            module_rows,
        )


if __name__ == "__main__":
    main()
