"""i.ann.patches on small real rasters: content, metadata, bad input."""

import json
import re
import resource
import signal
import subprocess

import numpy as np

import grass.script as gs

from conftest import (
    SYNTHETIC_CLASSES,
    assert_fails,
    make_synthetic,
    read_map,
    run,
    run_ok,
)


def load(folder):
    meta = json.loads((folder / "metadata.json").read_text())
    arrays = {k: np.load(folder / f) for k, f in meta["files"].items()}
    return meta, arrays


def test_patches_match_the_maps(mapset, tmp_path):
    bands, reference = make_synthetic()
    out = tmp_path / "ds"
    result = run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=out,
        size=16,
        number=40,
        validation=0.25,
        seed=3,
    )
    assert "30 training and 10 validation patches" in result.stderr
    meta, arrays = load(out)
    assert arrays["train_images"].shape == (30, 16, 16, 2)
    assert arrays["train_images"].dtype == np.float32
    assert arrays["validation_labels"].shape == (10, 16, 16)
    assert arrays["train_labels"].dtype == np.uint8
    assert [c["value"] for c in meta["classes"]] == [11, 21, 31]
    assert [c["label"] for c in meta["classes"]] == list(SYNTHETIC_CLASSES.values())
    assert meta["classes"][0]["color"] == "0:0:255"
    assert [b["name"].split("@")[0] for b in meta["bands"]] == bands

    # Every patch is the maps' window at its recorded origin, the labels are
    # the class indices of the reference, and NULL reference cells are 255.
    stack = np.stack([read_map(b, null=np.nan) for b in bands], axis=-1)
    ref = read_map(reference, null=-1, dtype=np.int32)
    index = {11: 0, 21: 1, 31: 2, -1: 255}
    for part in ("train", "validation"):
        origins = meta["sampling"]["origins"][part]
        for i, (row, col) in enumerate(origins):
            window = stack[row : row + 16, col : col + 16]
            np.testing.assert_allclose(arrays[part + "_images"][i], window, rtol=1e-6)
            expected = np.vectorize(index.get)(ref[row : row + 16, col : col + 16])
            np.testing.assert_array_equal(arrays[part + "_labels"][i], expected)

    labelled = ref != -1
    for b, name in enumerate(bands):
        values = stack[..., b][labelled]
        assert np.isclose(meta["statistics"]["mean"][b], values.mean(), rtol=1e-5)
        assert np.isclose(meta["statistics"]["std"][b], values.std(), rtol=1e-4)
    assert meta["patch_size"] == 16
    assert meta["region"]["rows"] == 60
    # The project's CRS (made with EPSG:3358): its own identifier is the
    # WKT's last EPSG code (WKT1 AUTHORITY or WKT2 ID).
    codes = re.findall(
        r'(?:AUTHORITY\["EPSG",\s*"?|ID\["EPSG",\s*)(\d+)', meta["projection"]
    )
    assert codes and codes[-1] == "3358", meta["projection"]


def test_same_seed_same_patches(mapset, tmp_path):
    bands, reference = make_synthetic()
    for name in ("a", "b"):
        run_ok(
            "i.ann.patches",
            input=",".join(bands),
            reference=reference,
            output=tmp_path / name,
            size=8,
            number=20,
            seed=7,
        )
    assert load(tmp_path / "a")[0]["sampling"]["origins"] == (
        load(tmp_path / "b")[0]["sampling"]["origins"]
    )
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "c",
        size=8,
        number=20,
        seed=8,
    )
    other = load(tmp_path / "c")
    assert (
        other[0]["sampling"]["origins"]
        != load(tmp_path / "a")[0]["sampling"]["origins"]
    )
    assert not np.array_equal(
        other[1]["train_images"], load(tmp_path / "a")[1]["train_images"]
    )


def limited_file_size(limit):
    """preexec_fn: files may not grow beyond `limit` bytes (EFBIG, no signal)."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_write_failure_is_a_grass_error_and_keeps_the_old_dataset(mapset, tmp_path):
    bands, reference = make_synthetic()
    out = tmp_path / "ds"
    common = dict(input=",".join(bands), reference=reference, size=16, seed=1)
    run_ok("i.ann.patches", output=out, number=10, **common)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    # 400 patches of 16 x 16 x 2 float32 cells (800 kB) do not fit in files
    # of at most 200 kB: the writes fail part-way, as on a full disk.
    args = ["i.ann.patches", "--overwrite", "output={}".format(out), "number=400"]
    args += ["{}={}".format(k, v) for k, v in common.items()]
    result = subprocess.run(
        args, capture_output=True, text=True, preexec_fn=limited_file_size(200_000)
    )
    assert_fails(result, "Cannot write the dataset folder <{}>".format(out))
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_integer_bands_are_stored_as_uint16(mapset, tmp_path):
    bands, reference = make_synthetic()
    gs.mapcalc("int_band = int(s_b1 * 100)", quiet=True)
    run_ok(
        "i.ann.patches",
        input="int_band," + bands[1],
        reference=reference,
        output=tmp_path / "f",
        size=8,
        number=5,
    )
    assert load(tmp_path / "f")[1]["train_images"].dtype == np.float32
    gs.mapcalc("int_band2 = int(s_b2)", quiet=True)
    run_ok(
        "i.ann.patches",
        input="int_band,int_band2",
        reference=reference,
        output=tmp_path / "u",
        size=8,
        number=5,
    )
    assert load(tmp_path / "u")[1]["train_images"].dtype == np.uint16


def test_null_band_cells_are_never_in_patches(mapset, tmp_path):
    bands, reference = make_synthetic()
    gs.mapcalc("holed = if(col() > 40 && col() < 45, null(), s_b1)", quiet=True)
    run_ok(
        "i.ann.patches",
        input="holed," + bands[1],
        reference=reference,
        output=tmp_path / "h",
        size=8,
        number=60,
    )
    meta, arrays = load(tmp_path / "h")
    for part in ("train", "validation"):
        assert not np.isnan(arrays[part + "_images"]).any()
        for row, col in meta["sampling"]["origins"][part]:
            assert col + 8 <= 40 or col >= 44


def test_output_exists_needs_overwrite(mapset, tmp_path):
    bands, reference = make_synthetic()
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=out,
        size=8,
        number=5,
    )
    assert_fails(result, str(out), "overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    run_ok(
        "i.ann.patches",
        "overwrite",
        input=",".join(bands),
        reference=reference,
        output=out,
        size=8,
        number=5,
    )
    assert not (out / "keep.txt").exists()
    assert (out / "metadata.json").exists()


def test_bad_input(mapset, tmp_path):
    bands, reference = make_synthetic()
    common = dict(reference=reference, size=8, number=5)
    out = tmp_path / "bad"

    assert_fails(
        run("i.ann.patches", input="nosuchmap," + bands[1], output=out, **common),
        "nosuchmap",
    )
    assert_fails(
        run(
            "i.ann.patches",
            input=",".join(bands),
            output=out,
            reference="s_b1",
            size=8,
            number=5,
        ),
        "s_b1",
        "integer",
    )
    gs.mapcalc("empty_ref = null()", quiet=True)
    assert_fails(
        run(
            "i.ann.patches",
            input=",".join(bands),
            output=out,
            reference="empty_ref",
            size=8,
            number=5,
        ),
        "empty_ref",
        "no labelled cells",
    )
    assert_fails(
        run(
            "i.ann.patches",
            input=",".join(bands),
            output=out,
            reference=reference,
            size=100,
            number=5,
        ),
        "larger than the region",
    )
    missing_parent = tmp_path / "nowhere" / "ds"
    assert_fails(
        run("i.ann.patches", input=",".join(bands), output=missing_parent, **common),
        str(tmp_path / "nowhere"),
    )
    assert list(tmp_path.iterdir()) == []


def test_fewer_patches_than_asked_warns(mapset, tmp_path):
    bands, reference = make_synthetic()
    gs.run_command("g.region", rows=12, cols=12)
    result = run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "few",
        size=10,
        number=50,
        min_labelled=0,
        split="random",
    )
    message = " ".join(result.stderr.split())
    assert "WARNING" in message and "Only 9 patches could be sampled, 50" in message
    assert load(tmp_path / "few")[0]["counts"]["train"]["patches"] == 7


def origins_of(meta, part):
    return np.array(meta["sampling"]["origins"][part]).reshape(-1, 2)


def test_group_gives_the_same_bands(mapset, tmp_path):
    bands, reference = make_synthetic()
    gs.run_command("i.group", group="g", input=",".join(bands), quiet=True)
    run_ok(
        "i.ann.patches",
        group="g",
        reference=reference,
        output=tmp_path / "g",
        size=8,
        number=10,
    )
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "i",
        size=8,
        number=10,
    )
    meta_g, arrays_g = load(tmp_path / "g")
    meta_i, arrays_i = load(tmp_path / "i")
    assert [b["name"] for b in meta_g["bands"]] == [b["name"] for b in meta_i["bands"]]
    np.testing.assert_array_equal(arrays_g["train_images"], arrays_i["train_images"])
    assert_fails(
        run(
            "i.ann.patches",
            group="nogroup",
            reference=reference,
            output=tmp_path / "x",
            size=8,
        ),
        "nogroup",
    )


def test_grid_sampling(mapset, tmp_path):
    bands, reference = make_synthetic()
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "d",
        size=8,
        number=1000,
        sampling="grid",
        stride=6,
        split="random",
        min_labelled=0,
    )
    meta, _ = load(tmp_path / "d")
    origins = np.concatenate([origins_of(meta, p) for p in ("train", "validation")])
    assert (origins % 6 == 0).all()
    # Every grid position whose patch fits (rows 0..52, cols 0..72) is used.
    assert len(origins) == len(range(0, 53, 6)) * len(range(0, 73, 6))


def test_balanced_sampling_favours_rare_classes(mapset, tmp_path):
    bands, _ = make_synthetic()
    gs.mapcalc(
        "rare = if(row() % 20 < 2 && col() % 20 < 2, 3, if(s_b1 > 120, 1, 2))",
        quiet=True,
    )
    shares = {}
    for method in ("random", "balanced"):
        run_ok(
            "i.ann.patches",
            input=",".join(bands),
            reference="rare",
            output=tmp_path / method,
            size=9,
            number=120,
            sampling=method,
            split="random",
            validation=0,
        )
        meta, arrays = load(tmp_path / method)
        centres = arrays["train_labels"][:, 4, 4]
        shares[method] = np.bincount(centres, minlength=3) / len(centres)
    # Class 3 covers 1% of the cells: random sampling barely sees it at the
    # centre, balanced sampling gives it as many patches as its cells allow.
    assert shares["random"][2] < 0.05
    assert shares["balanced"][2] >= 0.15
    assert shares["balanced"][2] > 5 * shares["random"][2]
    assert abs(shares["balanced"][0] - shares["balanced"][1]) < 0.1


def test_block_split_never_overlaps(mapset, tmp_path):
    bands, reference = make_synthetic()
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "b",
        size=8,
        number=200,
        validation=0.3,
        split="blocks",
        block_size=480,
        validation_map="split_map",
        seed=2,
    )
    meta, arrays = load(tmp_path / "b")
    assert meta["sampling"]["split"] == "blocks"
    assert meta["sampling"]["block_cells"] == [16, 16]
    assert arrays["validation_images"].shape[0] > 0
    split_map = read_map("split_map", dtype=np.int32)
    covered = {}
    for part, side in (("train", 0), ("validation", 1)):
        cells = np.zeros(split_map.shape, dtype=bool)
        for row, col in origins_of(meta, part):
            cells[row : row + 8, col : col + 8] = True
        assert (split_map[cells] == side).all()
        covered[part] = cells
    assert not (covered["train"] & covered["validation"]).any()
    assert "validation" in gs.read_command("r.category", map="split_map")


def test_keep_null_patches_filled_and_masked(mapset, tmp_path):
    bands, reference = make_synthetic()
    gs.mapcalc("holed = if(col() % 10 == 0, null(), s_b1)", quiet=True)
    result = run(
        "i.ann.patches",
        input="holed," + bands[1],
        reference=reference,
        output=tmp_path / "skip",
        size=12,
        number=20,
    )
    assert_fails(result, "No patch")
    run_ok(
        "i.ann.patches",
        "n",
        input="holed," + bands[1],
        reference=reference,
        output=tmp_path / "keep",
        size=12,
        number=20,
        split="random",
    )
    meta, arrays = load(tmp_path / "keep")
    holed = read_map("holed", null=np.nan)
    for i, (row, col) in enumerate(origins_of(meta, "train")):
        nulls = np.isnan(holed[row : row + 12, col : col + 12])
        assert nulls.any()
        patch = arrays["train_images"][i, ..., 0]
        assert np.allclose(patch[nulls], meta["statistics"]["mean"][0])
        assert (arrays["train_labels"][i][nulls] == 255).all()


def test_min_labelled(mapset, tmp_path):
    bands, _ = make_synthetic()
    gs.mapcalc("sparse = if(col() < 20, 1, if(col() > 60, 2, null()))", quiet=True)
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        reference="sparse",
        output=tmp_path / "s",
        size=16,
        number=50,
        min_labelled=75,
        split="random",
    )
    _, arrays = load(tmp_path / "s")
    for labels in arrays["train_labels"]:
        assert (labels != 255).mean() >= 0.75


def test_coarser_band_is_interpolated(mapset, tmp_path):
    # A 0.5 m ramp read into a 0.25 m region: bilinear interpolation of a
    # linear ramp is exact away from the edges; nearest gives steps.
    gs.run_command("g.region", n=40, s=0, e=40, w=0, res=0.5)
    gs.mapcalc("ramp = x()", quiet=True)
    gs.run_command("g.region", res=0.25)
    gs.mapcalc("fine = x() * 0 + row()", quiet=True)
    gs.mapcalc("labels = 1 + (col() % 2)", quiet=True)
    for method in ("bilinear", "nearest"):
        run_ok(
            "i.ann.patches",
            input="ramp,fine",
            reference="labels",
            output=tmp_path / method,
            size=16,
            number=30,
            resample=method,
            split="random",
        )
    meta, arrays = load(tmp_path / "bilinear")
    assert meta["bands"][0]["resolution"] == [0.5, 0.5]
    assert meta["bands"][0]["resampled"] == "bilinear"
    assert meta["bands"][1]["resampled"] is None
    for i, (row, col) in enumerate(origins_of(meta, "train")):
        x = (col + np.arange(16) + 0.5) * 0.25
        inner = (x > 0.5) & (x < 39.5)
        np.testing.assert_allclose(
            arrays["train_images"][i, 0, inner, 0], x[inner], atol=1e-4
        )
    meta_n, arrays_n = load(tmp_path / "nearest")
    assert meta_n["bands"][0]["resampled"] is None
    steps = arrays_n["train_images"][0, 0, :, 0]
    assert len(np.unique(steps)) <= 9
    assert gs.list_strings("raster", pattern="iann_resampled*", mapset=".") == []


def test_print_only(mapset, tmp_path):
    bands, reference = make_synthetic()
    result = run_ok(
        "i.ann.patches",
        "p",
        input=",".join(bands),
        reference=reference,
        output=tmp_path / "none",
        size=8,
        number=30,
    )
    assert "Patches:" in result.stdout and "water" in result.stdout
    assert "unlabelled" in result.stdout
    assert not (tmp_path / "none").exists()
