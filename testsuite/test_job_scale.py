"""Jobs of many blocks: planned, killed, resumed, written in place, and the
maps they leave as ordinary as any GRASS map.

The blocks are written straight into the job's maps (no merge): a job of
thousands of blocks must give the map of one block, resume after SIGKILL,
and leave maps that GRASS's own modules read as they read a map written
by GRASS itself, and that g.rename and g.remove handle whole.
"""

import os
import platform
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import grass.script as gs

from conftest import assert_fails, make_synthetic, read_map, run, run_ok
from test_blocks import (
    assert_no_job_left,
    done_blocks,
    job_maps,
    killed_after,
    location_path,
    start,
    stop_group,
    wait_for,
)

POINTWISE = """
import keras
from keras import layers


def build_model(input_shape, n_classes):
    inputs = keras.Input(shape=(None, None, input_shape[-1]))
    scores = layers.Conv2D(n_classes, 1)(inputs)
    return keras.Model(inputs, layers.Softmax()(scores))
"""


@pytest.fixture(scope="module")
def pointwise_bundle(synthetic_patches, tmp_path_factory):
    """A network of one 1 x 1 convolution (no margin: blocks of 8 cells)."""
    folder = tmp_path_factory.mktemp("pointwise")
    architecture = folder / "pointwise.py"
    architecture.write_text(POINTWISE)
    output = folder / "model"
    run_ok(
        "i.ann.train",
        input=synthetic_patches,
        output=output,
        architecture=architecture,
        epochs=3,
        batch_size=8,
        learning_rate=0.05,
        seed=1,
    )
    return output


def mapset_files():
    """Every file of the current mapset, relative to it."""
    folder = location_path() / gs.gisenv()["MAPSET"]
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and ".tmp" not in p.parts
    )


def test_thousands_of_blocks_resume_after_sigkill(mapset, pointwise_bundle):
    """2500 blocks of 8 x 8 cells: killed, resumed, the map of one block."""
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=400, cols=400)
    common = dict(input=",".join(bands), model=pointwise_bundle)
    run_ok(
        "i.ann.classify",
        output="one",
        uncertainty="one_u",
        block_size=1000000,
        **common
    )
    options = dict(output="many", uncertainty="many_u", block_size="8,8", nprocs=2)
    process = start("i.ann.classify", **options, **common)
    killed_after(process, 300, 300, "300 blocks")
    kept = done_blocks()
    assert 300 <= kept < 2500
    assert not gs.find_file("many", element="cell")["fullname"]
    result = run_ok("i.ann.classify", "verbose", **options, **common)
    message = " ".join(result.stderr.split())
    assert "in 2500 blocks of up to 8 x 8 cells" in message
    assert "{} of 2500 blocks already classified".format(kept) in message
    one = read_map("one", null=-1, dtype=np.int32)
    assert (one != -1).sum() > 1000 and len(np.unique(one[one != -1])) >= 2
    np.testing.assert_array_equal(read_map("many", null=-1, dtype=np.int32), one)
    np.testing.assert_allclose(
        read_map("many_u", null=np.nan), read_map("one_u", null=np.nan), atol=1e-6
    )
    assert_no_job_left()
    # Nothing of the killed run in any element (rasters, vectors, groups...).
    left = gs.read_command("g.list", type="all", pattern="*iann*", mapset=".")
    assert left.split() == []


def render(name, path):
    """d.rast of a map into a PNG file (GRASS's own display module)."""
    env = dict(
        os.environ,
        GRASS_RENDER_IMMEDIATE="png",
        GRASS_RENDER_FILE=str(path),
        GRASS_RENDER_WIDTH="160",
        GRASS_RENDER_HEIGHT="120",
    )
    subprocess.run(["d.rast", "map=" + name, "--quiet"], check=True, env=env)
    return Path(path).read_bytes()


def test_outputs_are_ordinary_maps(mapset, pointwise_bundle, tmp_path):
    """The written-in-place maps read as GRASS's own copies of them do.

    Oracle: the same maps written by GRASS itself (r.mapcalc copies, with
    the same colours): r.univar, r.info's range, r.out.gdal's file and
    d.rast's picture must be the same. Renamed, then removed, the maps
    leave the mapset's files as they were before the job.
    """
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=60, cols=80)
    before = mapset_files()
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=pointwise_bundle,
        output="out",
        probabilities="out_p",
        uncertainty="out_u",
        block_size="16,16",
    )
    maps = ["out", "out_p_11", "out_p_21", "out_p_31", "out_u"]
    for name in maps:
        copy = "copy_" + name
        gs.mapcalc("{} = {}".format(copy, name), quiet=True)
        gs.run_command("r.colors", map=copy, raster=name, quiet=True)
        for flags in ("g", "ge"):
            assert gs.read_command("r.univar", map=name, flags=flags) == (
                gs.read_command("r.univar", map=copy, flags=flags)
            ), name
        info = gs.raster_info(name)
        assert info["datatype"] == gs.raster_info(copy)["datatype"]
        assert (info["min"], info["max"]) == (
            gs.raster_info(copy)["min"],
            gs.raster_info(copy)["max"],
        ), name
        checksums = []
        for each in (name, copy):
            tif = tmp_path / (each + ".tif")
            gs.run_command(
                "r.out.gdal", input=each, output=str(tif), flags="c", quiet=True
            )
            report = subprocess.run(
                ["gdalinfo", "-checksum", str(tif)], capture_output=True, text=True
            ).stdout
            checksums.append(
                [line for line in report.splitlines() if "Checksum" in line]
            )
        assert checksums[0] and checksums[0] == checksums[1], name
        assert render(name, tmp_path / "a.png") == render(copy, tmp_path / "b.png")
        gs.run_command("g.remove", type="raster", name=copy, flags="f", quiet=True)
    categories = gs.read_command("r.category", map="out")
    assert "11\twater" in categories
    assert "i.ann.classify" in gs.read_command("r.info", map="out", flags="h")
    # Whole under another name, then gone without a trace.
    gs.run_command("g.rename", raster=("out", "renamed"), quiet=True)
    assert (read_map("renamed", null=-1) != -1).sum() > 0
    gs.run_command(
        "g.remove", type="raster", name=["renamed"] + maps[1:], flags="f", quiet=True
    )
    assert mapset_files() == before
    assert_no_job_left()


def test_a_second_run_for_the_same_output_stops_at_once(mapset, pointwise_bundle):
    """Two runs must not write one job's maps: the second is refused."""
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=400, cols=400)
    options = dict(
        input=",".join(bands),
        model=pointwise_bundle,
        output="busy",
        block_size="8,8",
    )
    process = start("i.ann.classify", **options)
    try:
        wait_for(lambda: done_blocks() >= 20, 300, "20 blocks")
        # Refused whatever its blocks, naming the run that holds the output.
        for block_size in ("8,8", "16"):
            assert_fails(
                run("i.ann.classify", **dict(options, block_size=block_size)),
                "Another run of i.ann.classify is classifying <busy>",
                "process {} on {}".format(process.pid, socket.gethostname()),
            )
        stdout, stderr = process.communicate(timeout=600)
    finally:
        stop_group(process)
    assert process.returncode == 0, stderr
    assert (read_map("busy", null=-1) != -1).sum() > 0
    assert_no_job_left()


def test_giving_up_an_interrupted_job(mapset, pointwise_bundle):
    """The manual's command to give up a job: the next run starts afresh."""
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=400, cols=400)
    options = dict(
        input=",".join(bands),
        model=pointwise_bundle,
        output="given",
        block_size="8,8",
    )
    process = start("i.ann.classify", **options)
    try:
        wait_for(lambda: done_blocks() >= 20, 300, "20 blocks")
        os.killpg(process.pid, signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        stop_group(process)
    assert job_maps()
    subprocess.run(
        'g.remove -f type=raster pattern="tmp_iann_*"', shell=True, check=True
    )
    assert job_maps() == []
    result = run_ok("i.ann.classify", "verbose", **options)
    assert "already classified" not in result.stderr
    run_ok("i.ann.classify", **dict(options, output="whole", block_size=1000000))
    np.testing.assert_array_equal(
        read_map("given", null=-1, dtype=np.int32),
        read_map("whole", null=-1, dtype=np.int32),
    )
    assert_no_job_left()


def test_temporary_maps_of_dead_runs_are_removed(mapset, pointwise_bundle):
    """The next run removes what a killed run left, never a live run's maps.

    Oracle: maps named as a run names its temporaries, for the PID of a
    process that has ended and for that of one still running.
    """
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=40, cols=40)
    node = gs.legalize_vector_name(platform.node(), fallback_prefix="")
    ended = subprocess.Popen(["true"])
    ended.wait()
    alive = subprocess.Popen(["sleep", "600"])
    try:
        dead_raster = "iann_resampled_0_{}_{}".format(node, ended.pid)
        dead_vector = "iann_areas_{}_{}".format(node, ended.pid)
        live_raster = "iann_reference_{}_{}".format(node, alive.pid)
        for name in (dead_raster, live_raster):
            gs.mapcalc("{} = 1".format(name), quiet=True)
        gs.run_command("v.edit", map=dead_vector, tool="create", quiet=True)
        run_ok(
            "i.ann.classify", input=",".join(bands), model=pointwise_bundle, output="c"
        )
        assert not gs.find_file(dead_raster, element="cell")["fullname"]
        assert not gs.find_file(dead_vector, element="vector")["fullname"]
        assert gs.find_file(live_raster, element="cell")["fullname"]
    finally:
        alive.kill()
        alive.wait()
    gs.run_command("g.remove", type="raster", name=live_raster, flags="f", quiet=True)


BUNDLE_V1 = Path(__file__).parent / "data" / "bundle_v1"


@contextmanager
def mapset_on_tmpfs(name, size):
    """A new mapset on a tmpfs of `size` of its own, made current."""
    folder = location_path() / name
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail("a tmpfs cannot be mounted here: " + mounted.stderr)
    try:
        (folder / "WIND").write_bytes(
            (location_path() / "PERMANENT" / "DEFAULT_WIND").read_bytes()
        )
        previous = gs.gisenv()["MAPSET"]
        region = gs.region()
        gs.run_command("g.mapset", mapset=name, quiet=True)
        gs.run_command(
            "g.region", **{k: region[k] for k in ("n", "s", "e", "w", "nsres", "ewres")}
        )
        try:
            yield folder
        finally:
            gs.run_command("g.mapset", mapset=previous, quiet=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
        folder.rmdir()


def bands_for_bundle_v1(rows, cols):
    """bundle_v1's three bands in the current mapset, the third at half the
    resolution (resampled into the job's mapset); their full names."""
    gs.run_command("g.region", n=rows, s=0, e=cols, w=0, res=1)
    gs.mapcalc("v1_red = float(100 + 40 * sin(row() * 7 + col() * 3))", quiet=True)
    gs.mapcalc("v1_green = float(110 + 45 * cos(row() * 5))", quiet=True)
    gs.run_command("g.region", res=2)
    gs.mapcalc("v1_ndsm = float(3 + 5 * sin(col() * 11))", quiet=True)
    gs.run_command("g.region", res=1)
    here = gs.gisenv()["MAPSET"]
    return ",".join("{}@{}".format(b, here) for b in ("v1_red", "v1_green", "v1_ndsm"))


def disk_full_message(result, folder):
    """The one message of a job stopped by a full disk, on one line."""
    message = " ".join(result.stderr.split())
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Compute Failed" not in result.stderr
    assert (
        "ERROR: The disk of mapset <{}> is full (the filesystem at <{}>".format(
            folder, folder
        )
        in message
    ), message
    assert "Make room on it, then run the same command again" in message
    return message


def test_a_disk_too_small_is_refused_before_any_block(mapset):
    """The maps a job needs are compared with the space left, up front."""
    bands = bands_for_bundle_v1(400, 400)
    with mapset_on_tmpfs(mapset + "_small", "1m") as folder:
        result = run(
            "i.ann.classify",
            input=bands,
            model=BUNDLE_V1,
            output="lc",
            probabilities="prob",
            uncertainty="unc",
        )
        message = disk_full_message(result, folder)
        # 400 x 400 cells: CELL classes (1 byte a cell) and five FCELL maps,
        # about 3.4 MB with their NULL files; the tmpfs holds 1 MB.
        assert "the maps of this job need 3 MB more" in message
        assert "WARNING" not in message  # nothing to keep
        assert gs.read_command("g.list", type="all", mapset=".").split() == []
        assert not (folder / "i.ann_jobs").exists()


@pytest.mark.parametrize(
    "stopped_at, nprocs",
    [("first", 1), ("first", 2), ("last", 1)],
)
def test_a_disk_filled_during_a_job_keeps_its_blocks(mapset, stopped_at, nprocs):
    """A full disk in a block (in this process or a worker) or while the
    maps are finished: one clear message, the blocks done kept, nothing
    under the outputs' names; with room made, the same command finishes
    the job, and its maps are those of a job on a roomy disk (the oracle).

    The job is stopped (SIGSTOP) when the first or the last block's marker
    appears, the tmpfs is filled to the last byte, and the job goes on.
    """
    bands = bands_for_bundle_v1(1000, 1000)
    common = dict(input=bands, model=BUNDLE_V1, block_size=100)
    outputs = dict(output="lc", probabilities="prob", uncertainty="unc")
    run_ok("i.ann.classify", output="lc_roomy", uncertainty="unc_roomy", **common)
    roomy = gs.gisenv()["MAPSET"]
    marker = "000000.json" if stopped_at == "first" else "000009.json"
    with mapset_on_tmpfs(mapset + "_tmpfs", "40m") as folder:
        process = start("i.ann.classify", nprocs=nprocs, **common, **outputs)
        try:
            wait_for(
                lambda: list(folder.glob("i.ann_jobs/blocks_*/" + marker)),
                300,
                "the marker of the {} block".format(stopped_at),
            )
            os.killpg(process.pid, signal.SIGSTOP)
            with open(folder / "filler", "wb") as filler:
                chunk = bytes(2**16)
                try:
                    while True:
                        filler.write(chunk)
                        filler.flush()
                except OSError:
                    pass
            os.killpg(process.pid, signal.SIGCONT)
            stdout, stderr = process.communicate(timeout=600)
        finally:
            stop_group(process)
        result = subprocess.CompletedProcess([], process.returncode, stdout, stderr)
        message = disk_full_message(result, folder)
        kept = done_blocks()
        if stopped_at == "first":
            assert 1 <= kept < 10
            assert "{} of 10 blocks are kept".format(kept) in message
        else:
            assert kept == 10
            assert "All 10 blocks are kept" in message
        maps = gs.read_command("g.list", type="raster", mapset=".").split()
        assert maps and all(name.startswith("tmp_iann_") for name in maps), maps
        (folder / "filler").unlink()
        result = run_ok("i.ann.classify", "verbose", nprocs=nprocs, **common, **outputs)
        assert "{} of 10 blocks already classified".format(kept) in " ".join(
            result.stderr.split()
        )
        np.testing.assert_array_equal(
            read_map("lc", null=-1, dtype=np.int32),
            read_map("lc_roomy@" + roomy, null=-1, dtype=np.int32),
        )
        np.testing.assert_allclose(
            read_map("unc", null=np.nan),
            read_map("unc_roomy@" + roomy, null=np.nan),
            atol=1e-6,
        )
        assert_no_job_left()
        assert sorted(gs.read_command("g.list", type="all", mapset=".").split()) == [
            "lc",
            "prob_1",
            "prob_2",
            "prob_3",
            "prob_5",
            "unc",
        ]
