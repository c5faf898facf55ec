#!/usr/bin/env python3
"""Peak memory and time of ONNX Runtime's CPU arena under several settings.

An untrained network (speed and memory do not depend on weights) is saved
as a bundle with its model.onnx; then, each in a fresh process, ONNX
Runtime runs it on four tiles of about TILE cells (three shapes, as a job's
edge tiles come in), with the options of i.ann's engine and one of the
arena settings of ARENAS: the default growth (doubling, what the engine
uses), growth by the request (arena_extend_strategy 1), no arena, and
either growth with the arena shrunk after each run. Each setting runs
twice, in turn. Printed: seconds, peak resident set of the process and the
ratios against the first setting (the baseline, 1.00). None beat the
default in the module (README, "Speed and memory"), so the engine keeps it.

Run: python3 bench/bench_onnx_arena.py [--network fcn-64] [--tile 1100]
     [--threads 2] [--arenas default exact off]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import REPO, print_table

sys.path.insert(0, os.path.join(REPO, "lib"))

SHAPES = ((0, 0), (0, -200), (-300, 0), (0, 0))
# Arena settings: (growth by the request, arena on, shrunk after each run).
ARENAS = {
    "default": (False, True, False),
    "exact": (True, True, False),
    "off": (False, False, False),
    "shrink": (False, True, True),
    "exact-shrink": (True, True, True),
}


def one_run(path, arena, tile, threads):
    """Seconds and peak RSS (bytes) of this process, printed as JSON."""
    import onnxruntime

    # The options of i.ann's engine (engines.OnnxRuntimeEngine).
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = False
    exact, arena_on, shrink = ARENAS[arena]
    if exact:
        memory = onnxruntime.OrtMemoryInfo(
            "Cpu",
            onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR,
            0,
            onnxruntime.OrtMemType.DEFAULT,
        )
        onnxruntime.create_and_register_allocator(
            memory, onnxruntime.OrtArenaCfg({"arena_extend_strategy": 1})
        )
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.enable_cpu_mem_arena = arena_on
    session = onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    run_options = onnxruntime.RunOptions()
    if shrink:
        run_options.add_run_config_entry(
            "memory.enable_memory_arena_shrinkage", "cpu:0"
        )
    rng = np.random.default_rng(0)
    bands = session.get_inputs()[0].shape[1]
    start = time.perf_counter()
    for rows, cols in SHAPES:
        x = rng.normal(size=(1, bands, tile + rows, tile + cols)).astype(np.float32)
        session.run(None, {name: x}, run_options)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="fcn-64")
    parser.add_argument("--tile", type=int, default=1100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--arenas", nargs="+", choices=ARENAS, default=["default", "exact", "off"]
    )
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        one_run(args.run[0], args.run[1], args.tile, args.threads)
        return
    from bench_classify import make_bundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle = os.path.join(tmp, args.network)
        make_bundle(bundle, args.network)
        path = os.path.join(bundle, "model.onnx")
        rows, base = [], None
        for arena in args.arenas * 2:
            out = subprocess.run(
                [sys.executable, __file__, "--run", path, arena]
                + ["--tile", str(args.tile), "--threads", str(args.threads)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            base = base or result
            rows.append(
                [
                    arena,
                    "{:.1f}".format(result["seconds"]),
                    "{:.0f}".format(result["peak"] / 2**20),
                    "{:.2f}".format(base["seconds"] / result["seconds"]),
                    "{:.2f}".format(result["peak"] / base["peak"]),
                ]
            )
    print(
        "\n{}, 4 tiles of about {} cells, {} threads\n".format(
            args.network, args.tile, args.threads
        )
    )
    print_table(["arena", "seconds", "peak RSS (MB)", "x speed", "x peak"], rows)


if __name__ == "__main__":
    main()
