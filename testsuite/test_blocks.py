"""i.ann.classify in blocks: local processes, a real Dask cluster, resume, faults.

The Dask cluster is real: the manual's `dask scheduler` and `dask worker`
commands, run as printed on this machine, started and stopped by the
fixture. The workers get no GRASS session (no GISRC) and no PYTHONPATH:
the module sends them the library, they set a session up themselves, as
workers on other machines do, and write their blocks into the job's maps
in the session's mapset.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import grass.script as gs

from conftest import (
    assert_fails,
    make_synthetic,
    own_messages,
    raster_exists,
    read_map,
    run,
    run_ok,
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def location_path():
    env = gs.gisenv()
    return Path(env["GISDBASE"]) / env["LOCATION_NAME"]


def jobs_folder():
    return location_path() / gs.gisenv()["MAPSET"] / "i.ann_jobs"


def job_maps():
    """The maps of unfinished jobs in the current mapset."""
    names = gs.list_strings("raster", pattern="tmp_iann_*", mapset=".")
    return sorted(name.split("@")[0] for name in names)


def done_blocks():
    """Blocks written by the jobs of the current mapset (their markers)."""
    return len(list(jobs_folder().glob("blocks_*/*.json")))


def assert_no_job_left():
    """Neither maps, nor markers, nor records of a job in the current mapset."""
    assert job_maps() == []
    assert not jobs_folder().exists(), list(jobs_folder().rglob("*"))


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail("timed out waiting for " + what)


def stop_group(process, timeout=20):
    """Stop a process and everything it started (its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + timeout
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_alive(process.pid):
            return


def group_alive(pgid):
    """Whether a process of the group still runs (zombies left to init do not)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/{}/stat".format(entry)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def killed_after(process, blocks, timeout, what):
    """SIGKILL the module's whole process group once `blocks` blocks are
    done, as a crash or the OOM killer would; wait until none is left."""
    try:
        wait_for(lambda: done_blocks() >= blocks, timeout, what)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        wait_for(lambda: not group_alive(process.pid), 30, "the killed processes")
    finally:
        stop_group(process)


def start(module, *flags, **options):
    """Start a module in a session of its own (killable with its children)."""
    args = [module] + ["--" + f if len(f) > 1 else "-" + f for f in flags]
    args += ["{}={}".format(k, v) for k, v in options.items()]
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


MANUAL = Path(__file__).parents[1] / "i.ann.classify" / "i.ann.classify.html"


def manual_cluster_commands():
    """The manual's `dask scheduler` and `dask worker` lines, as printed,
    for a cluster whose scheduler host is this machine (host1: 127.0.0.1)."""
    text = MANUAL.read_text()
    block = next(
        pre
        for pre in re.findall(r"<pre>(.*?)</pre>", text, re.S)
        if "dask scheduler" in pre
    )
    lines = [line for line in block.splitlines() if line.startswith("dask ")]
    assert [line.split()[:2] for line in lines] == [
        ["dask", "scheduler"],
        ["dask", "worker"],
    ], lines
    return [line.replace("host1", "127.0.0.1") for line in lines]


@pytest.fixture
def dask_cluster(grass_session, tmp_path):
    """The manual's Dask cluster on this machine: its scheduler and worker
    commands run as printed, in a shell of their own without GRASS (no
    GISBASE, GISRC or PYTHONPATH), stopped at the end."""
    from distributed import Client

    scheduler, workers = manual_cluster_commands()
    address = "tcp://127.0.0.1:8786"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GISRC", "GISBASE", "PYTHONPATH", "LD_LIBRARY_PATH")
    }
    logs = tmp_path / "dask"
    logs.mkdir()
    processes = []

    def launch(name, command):
        log = open(logs / (name + ".log"), "w")
        processes.append(
            subprocess.Popen(
                ["bash", "-c", command],
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )

    launch("scheduler", scheduler)
    launch("workers", workers)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield {"address": address, "processes": processes, "logs": logs}
    finally:
        for process in processes:
            stop_group(process)
        for process in processes:
            assert not group_alive(process.pid)


def classify_maps(name):
    classes = read_map(name, null=-1, dtype=np.int32)
    probabilities = np.stack(
        [read_map("{}_p_{}".format(name, v), null=np.nan) for v in (11, 21, 31)]
    )
    return classes, probabilities, read_map(name + "_u", null=np.nan)


def assert_classified(classes, null=-1):
    """A class map with data, in more than one class (not all NULL)."""
    assert (classes != null).sum() > 0, "the map is all NULL"
    assert len(np.unique(classes[classes != null])) >= 2, np.unique(classes)


def assert_same_maps(a, b, label=""):
    np.testing.assert_array_equal(a[0], b[0], err_msg=label)
    np.testing.assert_allclose(a[1], b[1], atol=1e-5, err_msg=label)
    np.testing.assert_allclose(a[2], b[2], atol=1e-5, err_msg=label)
    assert (a[0] != -1).sum() > 100
    assert_classified(a[0])


def fresh_pages_probe():
    """A function for Dask workers: page faults of a reused 16 MiB buffer.

    Oracle: the kernel's count of the calling thread's minor page faults.
    A buffer allocated, filled and freed a third time comes from glibc's
    heap, already paged in, unless the mmap threshold is frozen (a Dask
    nanny freezes it at 128 KiB): then it is mapped and zero-filled afresh,
    at least 8 faults even with 2 MiB pages. Nested, so that Dask pickles
    it by value (the workers cannot import this file).
    """

    def faults_of_a_reused_buffer():
        import resource

        import numpy as np

        for _ in range(2):
            np.ones(1 << 22, np.float32)
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        np.ones(1 << 22, np.float32)
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

    return faults_of_a_reused_buffer


@pytest.mark.parametrize("architecture", ["fcn", "unet"])
def test_processes_and_cluster_equal_one_process(
    mapset, request, dask_cluster, architecture
):
    bundle = request.getfixturevalue(
        "trained_bundle" if architecture == "fcn" else "unet_bundle"
    )
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=61, cols=83)
    gs.mapcalc("segs = int((row() - 1) / 7) * 100 + int((col() - 1) / 9)", quiet=True)
    from distributed import Client

    with Client(dask_cluster["address"], timeout=10) as client:
        # The nanny's setting holds in fresh workers: the check below means
        # something.
        assert min(client.run(fresh_pages_probe()).values()) >= 8
    common = dict(
        input=",".join(bands),
        model=bundle,
        uncertainty_method="margin",
    )
    for flags in (("n", "t"), ()):
        suffix = "_".join(flags) or "plain"
        names = {}
        for how, options in (
            ("one", {"tile_size": 4096, "block_size": 100000}),
            ("local", {"nprocs": 2, "block_size": "24,24", "tile_size": 16}),
            ("cluster", {"scheduler": dask_cluster["address"], "block_size": "20,20"}),
        ):
            name = "{}_{}".format(how, suffix)
            result = run_ok(
                "i.ann.classify",
                "verbose",
                *flags,
                output=name,
                probabilities=name + "_p",
                uncertainty=name + "_u",
                **common,
                **options,
            )
            names[how] = name
            if how == "cluster":
                assert "on the Dask cluster <{}>".format(
                    dask_cluster["address"]
                ) in " ".join(result.stderr.split())
                # Each worker process loads the model once, for all its blocks.
                loaded = [
                    line for line in result.stderr.splitlines() if "loaded" in line
                ]
                assert loaded and "loaded the model 2 times" in loaded[0], loaded
                # Both workers classified blocks, with glibc's heap reuse.
                with Client(dask_cluster["address"], timeout=10) as client:
                    faults = client.run(fresh_pages_probe()).values()
                    assert max(faults) < 8, faults
            if how == "local":
                assert "in 2 processes" in result.stderr
        one = classify_maps(names["one"])
        for how in ("local", "cluster"):
            assert_same_maps(one, classify_maps(names[how]), "{} {}".format(how, flags))
        assert (
            "Probability of class 11"
            in gs.raster_info(names["cluster"] + "_p_11")["title"]
        )
    # Object-based: segments spanning blocks get one class over all blocks.
    for how, options in (
        ("one", {}),
        ("local", {"nprocs": 2, "block_size": "24,24"}),
        ("cluster", {"scheduler": dask_cluster["address"], "block_size": "20,20"}),
    ):
        run_ok(
            "i.ann.classify",
            input=",".join(bands),
            model=bundle,
            output="obj_" + how,
            segments="segs",
            **options,
        )
    objects = read_map("obj_one", null=-1, dtype=np.int32)
    assert_classified(objects)
    segs = read_map("segs", dtype=np.int32)
    for seg in np.unique(segs):
        assert len(np.unique(objects[segs == seg])) == 1
    for how in ("local", "cluster"):
        np.testing.assert_array_equal(
            objects, read_map("obj_" + how, null=-1, dtype=np.int32)
        )
    assert_no_job_left()


def test_worker_killed_mid_job(mapset, dask_cluster, trained_bundle):
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=160, cols=160)
    run_ok(
        "i.ann.classify",
        "t",
        input=",".join(bands),
        model=trained_bundle,
        output="whole",
    )
    process = start(
        "i.ann.classify",
        "t",
        input=",".join(bands),
        model=trained_bundle,
        output="survived",
        scheduler=dask_cluster["address"],
        block_size="16,16",
    )
    from distributed import Client

    with Client(dask_cluster["address"], timeout=10) as client:
        worker_pids = list(client.run(os.getpid).values())
    try:
        wait_for(lambda: done_blocks() >= 3, 120, "three blocks")
        # One worker process dies (its nanny starts another).
        os.kill(worker_pids[0], signal.SIGKILL)
        killed_at = done_blocks()
        stdout, stderr = process.communicate(timeout=300)
    finally:
        stop_group(process)
    assert process.returncode == 0, stderr
    # The worker died with blocks still to classify: 5 x 5 blocks of 32
    # cells (16 rounded up to the fcn's margin of 25, then to 8 columns).
    assert killed_at < 25
    assert_classified(read_map("whole", null=-1, dtype=np.int32))
    np.testing.assert_array_equal(read_map("whole"), read_map("survived"))


def test_scheduler_lost_mid_job(mapset, dask_cluster, trained_bundle):
    """The scheduler dies with blocks left: a GRASS error naming it, no
    traceback, no output map, the finished blocks kept; a rerun without
    the cluster classifies only the others."""
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=160, cols=160)
    options = dict(
        input=",".join(bands), model=trained_bundle, output="lost", block_size="16,16"
    )
    run_ok(
        "i.ann.classify",
        "t",
        input=options["input"],
        model=trained_bundle,
        output="whole",
    )
    process = start("i.ann.classify", "t", scheduler=dask_cluster["address"], **options)
    try:
        wait_for(lambda: done_blocks() >= 3, 120, "three blocks")
        scheduler = dask_cluster["processes"][0]
        os.killpg(scheduler.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        stop_group(process)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    message = " ".join(stderr.split())
    assert (
        "ERROR: Lost the connection to the Dask scheduler <{}>".format(
            dask_cluster["address"]
        )
        in message
    )
    # Workers go on with the blocks they hold until they give up on the
    # scheduler: those count as kept too, once the workers are stopped.
    said = int(re.search(r"(\d+) of 25 blocks are kept", message).group(1))
    stop_group(dask_cluster["processes"][1])
    kept = done_blocks()
    assert 3 <= said <= kept < 25
    assert not raster_exists("lost")
    result = run_ok("i.ann.classify", "t", "verbose", **options)
    assert "{} of 25 blocks already classified".format(kept) in " ".join(
        result.stderr.split()
    )
    np.testing.assert_array_equal(read_map("whole"), read_map("lost"))
    assert_no_job_left()


def test_killed_run_resumes_only_missing_blocks(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=160, cols=160)
    options = dict(
        input=",".join(bands),
        model=trained_bundle,
        output="resumed",
        block_size="32,32",
    )
    run_ok("i.ann.classify", input=options["input"], model=trained_bundle, output="ref")
    process = start("i.ann.classify", "t", nprocs=2, **options)
    killed_after(process, 4, 120, "four blocks")
    kept = done_blocks()
    assert 4 <= kept < 25  # 5 x 5 blocks of 32 cells
    assert not raster_exists("resumed")
    result = run_ok("i.ann.classify", "t", "verbose", nprocs=2, **options)
    message = " ".join(result.stderr.split())
    assert "{} of 25 blocks already classified".format(kept) in message
    assert "Classifying {} blocks in 2 processes".format(25 - kept) in message
    run_ok(
        "i.ann.classify",
        "t",
        input=options["input"],
        model=trained_bundle,
        output="ref_t",
    )
    assert_classified(read_map("ref_t", null=-1, dtype=np.int32))
    np.testing.assert_array_equal(read_map("ref_t"), read_map("resumed"))
    assert_no_job_left()


def test_imported_model_resumes_and_runs_on_a_cluster(
    mapset, dask_cluster, trained_bundle, tmp_path
):
    """A bundle imported from an ONNX file (i.ann's own export, taken as a
    foreign model of fixed 512-cell tiles) goes through the block path as
    i.ann's own: killed, then resumed from its blocks; on a Dask cluster."""
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=96, cols=96)
    bundle = tmp_path / "imported"
    run_ok(
        "i.ann.train",
        **{"import": trained_bundle / "model.onnx"},
        classes="11:water,21:forest,31:urban",
        output=bundle,
    )
    # Test-time augmentation (t): eight times the work, so that the run is
    # still going when it is killed.
    options = dict(input=",".join(bands), model=bundle, block_size="32,32")
    run_ok(
        "i.ann.classify",
        "t",
        output="on_cluster",
        scheduler=dask_cluster["address"],
        **options,
    )
    assert_classified(read_map("on_cluster", null=-1, dtype=np.int32))
    process = start("i.ann.classify", "t", nprocs=2, output="resumed", **options)
    killed_after(process, 3, 120, "three blocks")
    kept = done_blocks()
    assert 3 <= kept < 9 and not raster_exists("resumed")  # 3 x 3 blocks
    result = run_ok(
        "i.ann.classify", "t", "verbose", nprocs=2, output="resumed", **options
    )
    message = " ".join(result.stderr.split())
    assert "{} of 9 blocks already classified".format(kept) in message
    np.testing.assert_array_equal(read_map("on_cluster"), read_map("resumed"))
    assert_no_job_left()


@pytest.mark.parametrize("how,nprocs", [("ctrl-c", 1), ("ctrl-c", 2), ("sigterm", 2)])
def test_interrupted_run_leaves_outputs_untouched(mapset, trained_bundle, how, nprocs):
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=160, cols=160)
    gs.mapcalc("out = 7", quiet=True)
    process = start(
        "i.ann.classify",
        "t",
        "overwrite",
        input=",".join(bands),
        model=trained_bundle,
        output="out",
        probabilities="outp",
        block_size="32,32",
        nprocs=nprocs,
    )
    try:
        wait_for(lambda: done_blocks() >= 2, 120, "two blocks")
        if how == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)  # as a terminal does
        else:
            process.send_signal(signal.SIGTERM)  # the module only
        stdout, stderr = process.communicate(timeout=60)
        wait_for(lambda: not group_alive(process.pid), 30, "all processes to stop")
    finally:
        stop_group(process)
    assert process.returncode != 0
    # A short GRASS message, as from any module; with nprocs=2 the worker
    # processes got the Ctrl-C too (the terminal's process group).
    assert "ERROR: Interrupted" in stderr, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert own_messages(stderr).strip().splitlines()[-1] == "ERROR: Interrupted"
    assert "run the same command again" in " ".join(stderr.split())
    assert (read_map("out") == 7).all()
    assert gs.list_strings("raster", pattern="outp*", mapset=".") == []
    # Kept for the rerun, as the message says: the job's maps, with the
    # blocks written so far, and their markers.
    kept = job_maps()
    assert kept and all(name.startswith("tmp_iann_") for name in kept)
    assert "maps {}* of this mapset".format(min(kept)) in " ".join(stderr.split())
    assert done_blocks() >= 2


def test_block_with_unreadable_data_is_named(mapset, trained_bundle):
    """A failure after the first blocks are written leaves no trace.

    The band's file is cut short: the blocks of the northern half read no
    lost row and are written (in one process, in order: blocks 0-3 before
    any of 4-7), then a block of the south fails. GRASS ends the process
    from C there (nprocs=1) or kills its workers (nprocs=2).
    """
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=128, cols=64)
    gs.mapcalc("broken = s_b1", quiet=True)
    fcell = location_path() / mapset / "fcell" / "broken"
    data = fcell.read_bytes()
    fcell.write_bytes(data[: len(data) * 3 // 4])  # the southern rows are lost
    gs.mapcalc("kept = 7", quiet=True)
    for options in ({}, {"nprocs": 2}):
        result = run(
            "i.ann.classify",
            "overwrite",
            input="broken," + bands[1],
            model=trained_bundle,
            output="kept",
            probabilities="keptp",
            block_size="32,32",
            **options,
        )
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        message = " ".join(result.stderr.split())
        assert "raster data for row" in message and "<broken>" in message
        # Blocks of the northern half read no lost row; one of the south fails.
        assert re.search(
            r"block [4-7] \(rows (65|97)-(96|128), columns", message
        ), result.stderr
        if not options:
            # Half of the tile rows were done, and written, before it failed.
            assert 0 <= result.stderr.find("50%") < result.stderr.find("ERROR")
        assert (read_map("kept") == 7).all()  # the existing map is untouched
        assert gs.list_strings("raster", pattern="keptp*", mapset=".") == []
        assert_no_job_left()  # the written blocks went with the failure


def test_resume_with_another_bundle_starts_afresh(mapset, trained_bundle, tmp_path):
    """Blocks of an interrupted run are reused only for the very same job.

    The bundle's folder gets another network of the same architecture (the
    classes' outputs swapped), with the size and modification time of the
    old model.keras, as a copy keeping times (cp -p, rsync) gives: the
    rerun must not reuse a block of the old network, and removes them.
    """
    import keras

    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=100, cols=100)
    bundle = tmp_path / "model"
    shutil.copytree(trained_bundle, bundle)
    options = dict(
        input=",".join(bands),
        model=bundle,
        output="resumed",
        block_size="32,32",
        engine="keras",
    )
    run_ok("i.ann.classify", "t", **dict(options, output="first"))
    process = start("i.ann.classify", "t", **options)
    try:
        wait_for(lambda: done_blocks() >= 2, 120, "two blocks")
        os.killpg(process.pid, signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        stop_group(process)
    assert 2 <= done_blocks() < 16
    old_maps = job_maps()
    assert old_maps
    model = bundle / "model.keras"
    stamp = model.stat()
    # New weights in the old archive (same members, same sizes).
    with zipfile.ZipFile(model) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    network = keras.saving.load_model(model)
    head = network.get_layer("head_conv")  # the fcn's 1 x 1 classifier
    kernel, bias = head.get_weights()
    head.set_weights([kernel[..., [1, 0, 2]], bias[[1, 0, 2]]])  # 11 <-> 21
    network.save(tmp_path / "swapped.keras")
    with zipfile.ZipFile(tmp_path / "swapped.keras") as archive:
        members["model.weights.h5"] = archive.read("model.weights.h5")
    with zipfile.ZipFile(model, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    assert model.stat().st_size == stamp.st_size
    os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    result = run_ok("i.ann.classify", "t", "verbose", **options)
    message = " ".join(result.stderr.split())
    assert "already classified" not in message
    assert "maps of an unfinished earlier run for <resumed> were removed" in message
    assert_no_job_left()
    first = read_map("first", null=-1, dtype=np.int32)
    assert (first != -1).sum() > 0 and {11, 21} <= set(np.unique(first).tolist())
    swapped = np.select([first == 11, first == 21], [21, 11], first)
    resumed = read_map("resumed", null=-1, dtype=np.int32)
    assert (resumed == swapped).mean() > 0.99, (resumed == swapped).mean()


def test_bad_job_options(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=60, cols=20)
    address = "tcp://127.0.0.1:{}".format(free_port())
    started = time.monotonic()
    assert_fails(
        run(
            "i.ann.classify",
            input=",".join(bands),
            model=trained_bundle,
            output="x",
            scheduler=address,
        ),
        address,
        "Cannot reach the Dask scheduler",
    )
    assert time.monotonic() - started < 30
    assert_fails(
        run(
            "i.ann.classify",
            "g",
            input=",".join(bands),
            model=trained_bundle,
            output="x",
        ),
        "scheduler",
    )
    result = run_ok(
        "i.ann.classify",
        "verbose",
        input=",".join(bands),
        model=trained_bundle,
        output="x",
        block_size=20,
        nprocs=4,
    )
    message = " ".join(result.stderr.split())
    # The fcn's margin is 25 cells: blocks are never smaller, and they
    # start on multiples of 8 columns.
    assert "block_size 20 rounded to 32" in message
    # As wide as the region (20 columns) when memory allows.
    assert "in 2 blocks of up to 32 x 20 cells" in message
    assert "2 blocks to classify: 2 processes instead of 4" in message
    # Memory bounds the blocks' width: two rows of tiles of 32 cells plus
    # the margins, for the two bands and the class map, 4 bytes a cell.
    gs.run_command("g.region", rows=60, cols=4000)
    result = run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="narrow",
        block_size=20,
        memory=1,
    )

    def buffers(columns):
        return 2 * (columns + 2 * 25) * 4 * ((32 + 2 * 25) * 2 + 32 * 1)

    width = max(c for c in range(8, 4000, 8) if buffers(c) <= 2**20)
    n_blocks = 2 * -(-4000 // width)
    assert "in {} blocks of up to 32 x {} cells".format(n_blocks, width) in " ".join(
        result.stderr.split()
    )
    assert_no_job_left()


def test_library_pipeline_from_arrays_equals_grass(mapset, trained_bundle):
    """The tile pipeline driven from arrays gives the module's map."""
    from iann.formats.bundle import read_bundle_metadata
    from iann.predict.engines import load_engine
    from iann.predict.pipeline import (
        ArraySink,
        ArraySource,
        PredictionSettings,
        classify_block,
    )
    from iann.predict.tiling import block_grid

    bands, _ = make_synthetic()
    # 45 x 70 cells of the bands' own grid: nothing resampled by the module.
    gs.run_command("g.region", n=1350, s=0, w=0, e=2100, res=30)
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="module",
        uncertainty="module_u",
        engine="keras",
    )
    metadata = read_bundle_metadata(str(trained_bundle))
    engine = load_engine(str(trained_bundle), metadata, "keras")
    stack = np.stack([read_map(b, null=np.nan, dtype=np.float32) for b in bands])
    settings = PredictionSettings(
        mean=np.array(metadata.normalisation["mean"], np.float32),
        std=np.array(metadata.normalisation["std"], np.float32),
        values=(11, 21, 31),
        margin=metadata.margin,
        uncertainty="entropy",
        batch=3,
    )
    sink = ArraySink(45, 70, 3, uncertainty=True)
    for block in block_grid(45, 70, 32, metadata.margin):
        classify_block(engine, settings, ArraySource(stack), sink, block, 16)
    module = read_map("module", null=-1, dtype=np.int32)
    assert_classified(module)
    np.testing.assert_array_equal(
        np.where(sink.classes == np.iinfo(np.int32).min, -1, sink.classes), module
    )
    np.testing.assert_allclose(sink.uncertainty, read_map("module_u"), atol=1e-5)


def test_pipeline_holds_one_tile_at_a_time(trained_bundle):
    """A row of tiles goes to the network tile by tile, not all at once.

    Oracle: the sizes of the arrays, from their shapes. One row of 8
    tiles: the band rows read, the class row written, and at most a few
    tiles' inputs and probabilities may be alive at the peak; holding the
    whole row's tiles (as the pipeline once did) would exceed that.
    """
    import tracemalloc

    from iann.formats.bundle import read_bundle_metadata
    from iann.predict.engines import load_engine
    from iann.predict.pipeline import (
        ArraySink,
        ArraySource,
        PredictionSettings,
        classify_block,
    )
    from iann.predict.tiling import block_grid

    metadata = read_bundle_metadata(str(trained_bundle))
    engine = load_engine(str(trained_bundle), metadata, "keras")
    margin, tile, n_tiles, n_bands, n_classes = metadata.margin, 64, 16, 2, 3
    rows, cols = tile, tile * n_tiles
    stack = np.random.default_rng(0).normal(size=(n_bands, rows, cols))
    stack = stack.astype(np.float32)
    settings = PredictionSettings(
        mean=np.zeros(n_bands, np.float32),
        std=np.ones(n_bands, np.float32),
        values=(11, 21, 31),
        margin=margin,
    )
    sink = ArraySink(rows, cols, n_classes)
    (block,) = block_grid(rows, cols, cols, margin)
    # The shapes of the edge and inner tiles, run once before measuring
    # (the class map alone: the engine gives the classes).
    for width in (tile + margin, tile + 2 * margin):
        engine.predict_classes(np.zeros((1, n_bands, rows, width), np.float32))
    tracemalloc.start()
    try:
        classify_block(engine, settings, ArraySource(stack), sink, block, tile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (sink.classes != np.iinfo(np.int32).min).all()
    strip = n_bands * rows * cols * 4
    class_row = rows * cols * 4
    # A tile with its margins on both sides: input bands and probabilities.
    one_tile = rows * (tile + 2 * margin) * (n_bands + n_classes) * 4
    assert peak < strip + class_row + 5 * one_tile, (peak, strip, one_tile)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
