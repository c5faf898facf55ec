"""i.ann.patches on small real rasters: content, metadata, bad input."""

import json

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
    assert "North Carolina" in meta["projection"] or "3358" in meta["projection"]


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
    )
    assert "WARNING" in result.stderr and "Only 9 patches" in result.stderr
    assert load(tmp_path / "few")[0]["counts"]["train"]["patches"] == 7
