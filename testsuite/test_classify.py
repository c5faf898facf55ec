"""i.ann.classify: tiled prediction, map metadata, accuracy report, bad input."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score

import grass.script as gs

from conftest import (
    assert_fails,
    make_synthetic,
    raster_exists,
    read_map,
    run,
    run_ok,
)


def location_path():
    env = gs.gisenv()
    return Path(env["GISDBASE"]) / env["LOCATION_NAME"]


def assert_classified(classes, null=-1):
    """A class map with data, in more than one class (not all NULL)."""
    assert (classes != null).sum() > 0, "the map is all NULL"
    assert len(set(np.unique(classes[classes != null]).tolist())) >= 2, np.unique(
        classes
    )


def test_classified_map_and_report(mapset, tmp_path, trained_bundle):
    bands, reference = make_synthetic()
    gs.mapcalc("b1_holed = if(row() == 5 && col() < 10, null(), s_b1)", quiet=True)
    report_file = tmp_path / "report.json"
    result = run_ok(
        "i.ann.classify",
        input="b1_holed," + bands[1],
        model=trained_bundle,
        output="classes",
        reference=reference,
        report=report_file,
        tile_size=24,
    )
    info = gs.raster_info("classes")
    assert info["datatype"] == "CELL"
    assert "i.ann" in info["title"]
    categories = gs.read_command("r.category", map="classes", separator="pipe")
    assert "11|water" in categories and "31|urban" in categories
    colors = gs.read_command("r.colors.out", map="classes")
    assert "11 0:0:255" in colors
    history = gs.read_command("r.info", map="classes", flags="h")
    assert "i.ann.classify" in history

    predicted = read_map("classes", null=-1, dtype=np.int32)
    truth = read_map(reference, null=-1, dtype=np.int32)
    assert set(np.unique(predicted)) <= {-1, 11, 21, 31}
    assert_classified(predicted)
    # NULL in any band gives NULL output, and nowhere else.
    assert (predicted[4, :9] == -1).all()
    assert (predicted[predicted != -1] > 0).all()
    assert (predicted == -1).sum() == 9

    report = json.loads(report_file.read_text())
    keep = (truth != -1) & (predicted != -1)
    assert report["cells"] == keep.sum()
    assert np.isclose(
        report["overall_accuracy"], accuracy_score(truth[keep], predicted[keep])
    )
    assert np.isclose(report["kappa"], cohen_kappa_score(truth[keep], predicted[keep]))
    # The floor is the share of the reference's most frequent class (what
    # mapping everything as that class scores), counted here.
    majority = np.bincount(truth[keep]).max() / keep.sum()
    assert report["majority_share"] == pytest.approx(majority)
    assert report["overall_accuracy"] > majority + 0.3
    assert [c["label"] for c in report["classes"]] == ["water", "forest", "urban"]
    assert "Overall accuracy" in result.stdout and "Cohen's kappa" in result.stdout


@pytest.mark.parametrize("architecture", ["fcn", "unet"])
def test_tiled_equals_whole(mapset, request, architecture):
    bundle = request.getfixturevalue(
        "trained_bundle" if architecture == "fcn" else "unet_bundle"
    )
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=61, cols=83)
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=bundle,
        output="whole",
        tile_size=4096,
        probabilities="whole_p",
    )
    whole = read_map("whole", null=-1, dtype=np.int32)
    assert_classified(whole)
    # Tiles several times narrower than the region, odd region sizes, blocks
    # that are no multiple of the tiles; for the U-Net tiles and blocks keep
    # to its 4-cell pooling grid.
    for name, options in (
        ("tiled", {"tile_size": 16}),
        ("blocks", {"block_size": "24,24", "tile_size": 16}),
    ):
        run_ok(
            "i.ann.classify",
            input=",".join(bands),
            model=bundle,
            output=name,
            probabilities=name + "_p",
            **options,
        )
        np.testing.assert_array_equal(whole, read_map(name, null=-1, dtype=np.int32))
        np.testing.assert_allclose(
            read_map("whole_p_11"), read_map(name + "_p_11"), atol=1e-5
        )


def test_overwrite_and_unseen_reference_classes(mapset, tmp_path, trained_bundle):
    bands, reference = make_synthetic()
    gs.mapcalc("existing = 1", quiet=True)
    result = run(
        "i.ann.classify", input=",".join(bands), model=trained_bundle, output="existing"
    )
    assert_fails(result, "existing", "overwrite")
    assert read_map("existing").max() == 1
    gs.mapcalc("ref_new = if(row() < 10, 99, s_ref)", quiet=True)
    result = run_ok(
        "i.ann.classify",
        "overwrite",
        input=",".join(bands),
        model=trained_bundle,
        output="existing",
        reference="ref_new",
        report=tmp_path / "r.json",
    )
    assert "never saw: 99" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["unseen_reference_classes"] == [99]
    unseen = [c for c in report["classes"] if c["value"] == 99][0]
    assert (
        unseen["recall"] == 0 and unseen["support"] == 9 * 80
    )  # rows 1..9 (row() is 1-based)


def test_bad_input_leaves_no_map(mapset, tmp_path, trained_bundle):
    bands, _ = make_synthetic()
    assert_fails(
        run("i.ann.classify", input=bands[0], model=trained_bundle, output="out"),
        "Model <{}> was trained on 2 bands".format(trained_bundle),
        "1 were given",
    )
    assert_fails(
        run("i.ann.classify", input=",".join(bands), model=tmp_path, output="out"),
        "<{}> is not a model bundle written by i.ann.train".format(tmp_path),
    )
    # A model.keras that is no zip, and one cut short (an interrupted copy):
    # both named as damaged, not "File not found" (Keras's words for both).
    for name, damage in (
        ("text", lambda data: b"not a model"),
        ("truncated", lambda data: data[: len(data) // 2]),
    ):
        broken = tmp_path / name
        shutil.copytree(trained_bundle, broken)
        model = broken / "model.keras"
        model.write_bytes(damage(model.read_bytes()))
        result = run(
            "i.ann.classify", input=",".join(bands), model=broken, output="out"
        )
        assert_fails(result, "Model file <{}> is damaged or truncated".format(model))
        assert "File not found" not in result.stderr
    assert_fails(
        run(
            "i.ann.classify",
            input="nomap," + bands[1],
            model=trained_bundle,
            output="out",
        ),
        "Raster map <nomap> not found",
    )
    gs.mapcalc("nothing = null()", quiet=True)
    assert_fails(
        run(
            "i.ann.classify",
            input="nothing,nothing",
            model=trained_bundle,
            output="out",
        ),
        "No cell of the region has data in all bands <nothing@{m},nothing@{m}>".format(
            m=mapset
        ),
    )
    assert not raster_exists("out")
    assert gs.list_strings("raster", pattern="tmp_iann*", mapset=".") == []


def test_probabilities_and_uncertainty(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.mapcalc("b1_holed = if(row() == 7, null(), s_b1)", quiet=True)
    run_ok(
        "i.ann.classify",
        input="b1_holed," + bands[1],
        model=trained_bundle,
        output="cls",
        probabilities="prob",
        uncertainty="unc",
        tile_size=32,
    )
    probs = np.stack(
        [read_map("prob_{}".format(v), null=np.nan) for v in (11, 21, 31)], axis=-1
    )
    assert gs.raster_info("prob_21")["datatype"] == "FCELL"
    assert np.isnan(probs[6]).all()
    valid = probs[~np.isnan(probs[..., 0])]
    np.testing.assert_allclose(valid.sum(axis=-1), 1.0, atol=1e-4)
    assert valid.min() >= 0 and valid.max() <= 1
    classes = read_map("cls", null=-1, dtype=np.int32)
    expected = np.array([11, 21, 31])[np.nanargmax(np.nan_to_num(probs, nan=-1), -1)]
    keep = classes != -1
    np.testing.assert_array_equal(classes[keep], expected[keep])
    unc = read_map("unc", null=np.nan)
    p = np.clip(probs, 1e-12, 1)
    entropy = -(p * np.log(p)).sum(-1) / np.log(3)
    np.testing.assert_allclose(unc[keep], entropy[keep], atol=1e-4)
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="cls2",
        probabilities="prob2",
        uncertainty="margin_unc",
        uncertainty_method="margin",
    )
    probs = np.stack([read_map("prob2_{}".format(v)) for v in (11, 21, 31)], -1)
    margin = read_map("margin_unc")
    top = np.sort(probs, axis=-1)
    ok = ~np.isnan(top[..., 0])
    np.testing.assert_allclose(
        margin[ok], (1 - (top[..., -1] - top[..., -2]))[ok], atol=1e-4
    )


def test_dihedral_transforms_are_undone():
    from iann.nn.augmentation import dihedral, undo_dihedral

    a = np.arange(5 * 7 * 3).reshape(5, 7, 3)  # rows, cols, bands: not square

    def key(x):
        return x.shape, x.tobytes()

    # The 8 symmetries of a rectangle's grid, by index arithmetic: flips of
    # rows and columns, with or without swapping rows and columns.
    t = a.transpose(1, 0, 2)
    symmetries = {key(np.ascontiguousarray(x)) for x in (a, t)}
    symmetries |= {key(np.ascontiguousarray(x[::-1])) for x in (a, t)} | {
        key(np.ascontiguousarray(x[:, ::-1])) for x in (a, t)
    }
    symmetries |= {key(np.ascontiguousarray(x[::-1, ::-1])) for x in (a, t)}
    assert len(symmetries) == 8
    seen = set()
    for k in range(8):
        turned = dihedral(a, k)
        np.testing.assert_array_equal(undo_dihedral(turned, k), a)
        seen.add(key(np.ascontiguousarray(turned)))
    assert seen == symmetries  # eight different views, all of them


def test_test_time_augmentation_commutes_with_rotation(mapset, trained_bundle):
    """Averaged over the 8 flips and rotations, a map rotates with its input.

    The oracle is geometry, not the code under test: the bands turned by 90
    degrees must give the map of the original bands turned by 90 degrees
    (exactly the same views are averaged), which the plain network does not.
    """
    from grass.script import array as garray

    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=36, cols=36)
    for band in bands:
        # Both sets at the region's cells, so that neither is resampled.
        cells = read_map(band, dtype=np.float32)
        for name, values in (("_id", cells), ("_rot", np.rot90(cells))):
            written = garray.array(dtype=np.float32)
            written[...] = values
            written.write(band + name, overwrite=True)
    for flag, suffix in (("t", "tta"), ("", "plain")):
        for name in ("", "_rot"):
            maps = [b + (name or "_id") for b in bands]
            run_ok(
                "i.ann.classify",
                *([flag] if flag else []),
                input=",".join(maps),
                model=trained_bundle,
                output=suffix + name,
                probabilities=suffix + name + "_p",
                tile_size=4096,
            )

    def probabilities(name):
        return np.stack([read_map("{}_p_{}".format(name, v)) for v in (11, 21, 31)])

    tta, tta_rot = probabilities("tta"), probabilities("tta_rot")
    np.testing.assert_allclose(tta_rot, np.rot90(tta, axes=(1, 2)), atol=1e-5)
    # The class maps too, but where two classes tie within rounding.
    classes = read_map("tta", null=-1, dtype=np.int32)
    assert_classified(classes)
    top = np.sort(tta, axis=0)
    clear = np.rot90(top[-1] - top[-2] > 1e-4)
    np.testing.assert_array_equal(
        read_map("tta_rot", null=-1, dtype=np.int32)[clear], np.rot90(classes)[clear]
    )
    assert clear.mean() > 0.95
    plain, plain_rot = probabilities("plain"), probabilities("plain_rot")
    assert np.abs(plain_rot - np.rot90(plain, axes=(1, 2))).max() > 1e-3
    assert np.abs(tta - plain).max() > 1e-3


def test_segments_take_the_class_of_highest_mean_probability(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.mapcalc("segs = int((row() - 1) / 6) * 100 + int((col() - 1) / 5)", quiet=True)
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="obj",
        probabilities="sp",
        segments="segs",
    )
    segs = read_map("segs", dtype=np.int32)
    obj = read_map("obj", null=-1, dtype=np.int32)
    assert_classified(obj)
    probs = np.stack([read_map("sp_{}".format(v)) for v in (11, 21, 31)], -1)
    for seg in np.unique(segs)[::7]:
        cells = segs == seg
        assert len(np.unique(obj[cells])) == 1
        mean = probs[cells].mean(axis=0)
        assert obj[cells][0] == [11, 21, 31][int(np.argmax(mean))]
    assert "segments=" in gs.read_command("r.info", map="obj", flags="h")


def test_normalize_image_transfers_to_rescaled_bands(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.mapcalc("scaled1 = s_b1 * 2.5 + 300", quiet=True)
    gs.mapcalc("scaled2 = s_b2 * 0.5 - 20", quiet=True)
    run_ok("i.ann.classify", input=",".join(bands), model=trained_bundle, output="orig")
    run_ok(
        "i.ann.classify",
        "n",
        input="scaled1,scaled2",
        model=trained_bundle,
        output="transfer",
    )
    run_ok(
        "i.ann.classify", input="scaled1,scaled2", model=trained_bundle, output="naive"
    )
    orig = read_map("orig", null=-1, dtype=np.int32)
    assert_classified(orig)
    assert (read_map("transfer", null=-1, dtype=np.int32) == orig).mean() > 0.95
    assert (read_map("naive", null=-1, dtype=np.int32) == orig).mean() < 0.8


def test_assess_existing_map_and_plot(mapset, tmp_path, trained_bundle):
    bands, reference = make_synthetic()
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="cls",
        reference=reference,
        report=tmp_path / "a.json",
        plot=tmp_path / "cm.png",
    )
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run_ok(
        "i.ann.classify",
        "e",
        classified="cls",
        reference=reference,
        report=tmp_path / "b.json",
    )
    assert "Overall accuracy" in result.stdout
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    for key in ("overall_accuracy", "kappa", "macro_f1", "confusion_matrix"):
        assert a[key] == b[key]
    assert a["area_adjusted"]["overall_accuracy"] == pytest.approx(
        b["area_adjusted"]["overall_accuracy"]
    )


def test_small_memory_gives_the_same_map(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.run_command("g.region", cols=400)
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="big",
        memory=1024,
    )
    result = run_ok(
        "i.ann.classify",
        "verbose",
        input=",".join(bands),
        model=trained_bundle,
        output="small",
        memory=1,
    )
    # Two tile rows in flight (one read ahead, one being written), each
    # 400 columns x 4 bytes x ((64 + 2 x 25 margin) rows x 2 bands + 64
    # rows x 1 output): 934 kB fit in 1 MB; tiles of 128 cells need 1.55 MB.
    assert "Tiles of 64 cells" in result.stderr
    assert_classified(read_map("big", null=-1, dtype=np.int32))
    np.testing.assert_array_equal(read_map("big"), read_map("small"))


def test_failure_after_the_blocks_leaves_nothing(mapset, trained_bundle):
    """A failure once every block is written and merged leaves no trace.

    The segment map is damaged (its file cut short): it is read only after
    all blocks are classified and merged into temporary maps, and GRASS
    ends the process from C there, where no Python cleanup runs.
    """
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=64, cols=64)
    gs.mapcalc("segs = int((row() - 1) / 6) * 100 + int((col() - 1) / 5)", quiet=True)
    cell = location_path() / mapset / "cell" / "segs"
    cell.write_bytes(cell.read_bytes()[: cell.stat().st_size * 3 // 4])
    gs.mapcalc("never = 7", quiet=True)
    before = gs.region()
    result = run(
        "i.ann.classify",
        "overwrite",
        input=",".join(bands),
        model=trained_bundle,
        output="never",
        probabilities="neverp",
        segments="segs",
    )
    assert_fails(result, "raster data for row", "<segs>")
    # The failure came after the blocks: progress had reached 100%.
    assert 0 <= result.stderr.find("100%") < result.stderr.find("ERROR")
    assert gs.region() == before
    assert (read_map("never") == 7).all()  # the existing map is untouched
    assert gs.list_strings("raster", pattern="neverp*", mapset=".") == []
    assert gs.list_strings("raster", pattern="tmp_iann*", mapset=".") == []
    assert not (location_path() / mapset / "i.ann_jobs").exists()


def test_group_input_equals_map_list(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.run_command("i.group", group="grp", input=",".join(bands), quiet=True)
    run_ok("i.ann.classify", group="grp", model=trained_bundle, output="by_group")
    run_ok(
        "i.ann.classify", input=",".join(bands), model=trained_bundle, output="by_list"
    )
    assert_classified(read_map("by_list", null=-1, dtype=np.int32))
    np.testing.assert_array_equal(read_map("by_group"), read_map("by_list"))
    assert_fails(
        run("i.ann.classify", group="nogroup", model=trained_bundle, output="x"),
        "nogroup",
    )


def test_module_output_read_on_this_grass(mapset):
    """Statistics, map info, group members and units are read right, in the
    form this GRASS has: JSON on 8.5 and later (their -g flags deprecated),
    shell style before."""
    from iann.grass import module_output
    from iann.grass.rasters import group_members, raster_info
    from iann.jobs.checks import image_statistics

    gs.run_command("g.region", rows=30, cols=20)
    gs.mapcalc("ints = if(row() == 3, null(), row() * 10 + col())", quiet=True)
    gs.mapcalc("reals = float(row()) / 7", quiet=True)
    gs.run_command("i.group", group="two", input="reals,ints", quiet=True)
    ints = read_map("ints", null=np.nan)
    reals = read_map("reals")

    version = tuple(int(part) for part in gs.version()["version"].split(".")[:2])
    formats = module_output.output_formats("r.univar")
    assert ("json" in formats) == (version >= (8, 5)), formats
    means, stds = image_statistics(["ints", "reals"])
    np.testing.assert_allclose(means, [np.nanmean(ints), reals.mean()], rtol=1e-6)
    np.testing.assert_allclose(stds, [np.nanstd(ints), reals.std()], rtol=1e-5)
    info = raster_info("ints")
    assert info["datatype"] == "CELL"
    assert (float(info["min"]), float(info["max"])) == (11, 320)
    assert float(info["nsres"]) == gs.region()["nsres"]
    assert group_members("two") == [
        "reals@" + gs.gisenv()["MAPSET"],
        "ints@" + gs.gisenv()["MAPSET"],
    ]
    assert module_output.metres_per_unit() == 1.0  # EPSG:3358, in metres
    wkt = module_output.projection_wkt()
    assert "\n" not in wkt and wkt.startswith(("PROJCRS[", "PROJCS["))


def test_fcn_prediction_form_gives_the_same_probabilities(trained_bundle, unet_bundle):
    import keras

    from iann.nn.architectures import build_fcn, fcn_for_prediction

    model = keras.saving.load_model(trained_bundle / "model.keras")
    lean = fcn_for_prediction(model)
    assert lean is not None and "concat" not in [layer.name for layer in lean.layers]
    tile = np.random.default_rng(5).normal(size=(1, 70, 45, model.input_shape[-1]))
    np.testing.assert_allclose(
        np.asarray(lean.predict_on_batch(tile.astype("f4"))),
        np.asarray(model.predict_on_batch(tile.astype("f4"))),
        atol=1e-5,
    )
    # Not an fcn, or an fcn whose head does not follow its blocks: left as is.
    assert (
        fcn_for_prediction(keras.saving.load_model(unet_bundle / "model.keras")) is None
    )
    other = build_fcn((None, None, 2), 3, filters=4)
    head = other.get_layer("head_conv")
    kernel, bias = head.get_weights()
    head.set_weights([kernel[:, :, ::-1], bias])  # blocks' slices swapped
    lean = fcn_for_prediction(other)
    assert lean is not None
    np.testing.assert_allclose(
        np.asarray(lean.predict_on_batch(tile[..., :2].astype("f4"))),
        np.asarray(other.predict_on_batch(tile[..., :2].astype("f4"))),
        atol=1e-5,
    )


def test_mask_makes_null_cells_and_is_kept(mapset, trained_bundle):
    """Under a MASK the bands read as NULL, as for any GRASS module.

    The oracle: the same bands set NULL outside the mask by r.mapcalc,
    classified without a MASK. The MASK is still there afterwards.
    """
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=40, cols=50)
    gs.mapcalc(
        "inside = if((row() - 20) ^ 2 + (col() - 25) ^ 2 < 300, 1, null())",
        quiet=True,
    )
    for band in bands:
        gs.mapcalc("{0}_m = if(isnull(inside), null(), {0})".format(band), quiet=True)
    unmasked = run_ok(
        "i.ann.classify",
        input=",".join(b + "_m" for b in bands),
        model=trained_bundle,
        output="oracle",
        probabilities="oracle_p",
    )
    gs.run_command("r.mask", raster="inside", quiet=True)
    mask_before = read_map("MASK", null=-1, dtype=np.int32)
    result = run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="masked",
        probabilities="masked_p",
    )
    note = "A MASK is active: the cells it masks are NULL in all outputs"
    assert note in " ".join(result.stderr.split())
    assert "MASK" not in unmasked.stderr
    assert raster_exists("MASK")
    np.testing.assert_array_equal(
        read_map("MASK", null=-1, dtype=np.int32), mask_before
    )
    # Read without the MASK: the NULL cells are in the maps themselves.
    gs.run_command("r.mask", flags="r", quiet=True)
    inside = read_map("inside", null=0, dtype=np.int32) == 1
    masked = read_map("masked", null=-1, dtype=np.int32)
    assert_classified(masked)
    assert (masked[~inside] == -1).all() and (masked[inside] != -1).all()
    np.testing.assert_array_equal(masked, read_map("oracle", null=-1, dtype=np.int32))
    np.testing.assert_allclose(
        read_map("masked_p_21", null=np.nan),
        read_map("oracle_p_21", null=np.nan),
        atol=1e-5,
    )


def test_band_order_and_resolution_warnings(mapset, trained_bundle):
    """Warnings for bands in another order and cells unlike the training's."""
    bands, _ = make_synthetic()
    common = dict(model=trained_bundle)
    gs.run_command("g.region", n=600, s=0, w=0, e=600, res=30)
    swapped = run_ok(
        "i.ann.classify", input=",".join(bands[::-1]), output="swapped", **common
    )
    message = " ".join(swapped.stderr.split())
    assert "The bands <s_b2,s_b1> are those the model was trained on in another" in (
        message
    )
    assert "(<s_b1,s_b2>)" in message
    assert "times smaller" not in message and "times larger" not in message
    # The bundle was trained on 30 m cells; 10 m cells are 3 times smaller.
    gs.run_command("g.region", res=10)
    finer = run_ok("i.ann.classify", input=",".join(bands), output="finer", **common)
    message = " ".join(finer.stderr.split())
    assert (
        "The region's cells (10 m) are 3.0 times smaller than those model <{}> was "
        "trained on (30 m)".format(trained_bundle) in message
    )
    assert "another order" not in message
    # Within the factor of 1.5 the manual states: no warning at all.
    gs.run_command("g.region", res=40)
    close = run_ok("i.ann.classify", input=",".join(bands), output="close", **common)
    assert "WARNING" not in close.stderr, close.stderr


def test_cell_sizes_in_metres_for_any_units():
    """Latitude-longitude cells are measured in metres, not taken as metres."""
    from iann.grass.units import cell_size_metres, training_cell_size, units_of_wkt

    def haversine(lat1, lon1, lat2, lon2, radius=6371008.8):
        p1, p2 = math.radians(lat1), math.radians(lat2)
        a = (
            math.sin((p2 - p1) / 2) ** 2
            + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
        )
        return 2 * radius * math.asin(math.sqrt(a))

    # A cell of 0.0002 x 0.0004 degrees at 60 N: both sides about 22 m.
    ns = haversine(60, 10, 60.0002, 10)
    ew = haversine(60, 10, 60, 10.0004)
    expected = math.sqrt(ns * ew)
    assert cell_size_metres(0.0002, 0.0004, "degrees", 60) == pytest.approx(
        expected, rel=1e-3
    )
    metadata = {
        "dataset": {
            "region": {
                "projection": 3,
                "n": 60.5,
                "s": 59.5,
                "nsres": 0.0002,
                "ewres": 0.0004,
            },
            "projection": 'GEOGCRS["WGS 84",ANGLEUNIT["degree",0.0174532925199433]]',
        }
    }
    assert training_cell_size(metadata["dataset"]) == pytest.approx(expected, rel=1e-3)
    # Feet: the CRS's own length unit, not that of its datum or parameters.
    feet = (
        'PROJCS["x",GEOGCS["g",DATUM["d",SPHEROID["s",6378137,298]],'
        'UNIT["degree",0.0174532925199433]],PARAMETER["false_easting",0],'
        'UNIT["US survey foot",0.3048006096012192],AXIS["X",EAST]]'
    )
    assert units_of_wkt(feet) == pytest.approx(0.3048006096012192)
    assert cell_size_metres(10, 10, units_of_wkt(feet)) == pytest.approx(3.048006)


def test_assess_map_without_categories(mapset, tmp_path):
    """-e on a map made elsewhere, with no categories: the report is right."""
    _, reference = make_synthetic()
    gs.mapcalc("rule = if(s_b1 > 120, 11, 21)", quiet=True)
    listed = gs.read_command("r.category", map="rule", separator="pipe").split()
    assert listed == ["11|", "21|"]  # values without labels
    result = run_ok(
        "i.ann.classify",
        "e",
        classified="rule",
        reference=reference,
        report=tmp_path / "rule.json",
    )
    assert "Overall accuracy" in result.stdout
    report = json.loads((tmp_path / "rule.json").read_text())
    truth = read_map(reference, null=-1, dtype=np.int32)
    mapped = read_map("rule", null=-1, dtype=np.int32)
    keep = (truth != -1) & (mapped != -1)
    assert report["cells"] == keep.sum() > 0
    assert report["overall_accuracy"] == pytest.approx(
        accuracy_score(truth[keep], mapped[keep])
    )
    assert report["kappa"] == pytest.approx(
        cohen_kappa_score(truth[keep], mapped[keep])
    )
    assert [c["value"] for c in report["classes"]] == [11, 21, 31]
    urban = [c for c in report["classes"] if c["value"] == 31][0]
    assert urban["support"] == (truth[keep] == 31).sum() > 0
    assert urban["recall"] == 0  # never mapped as 31


def test_assess_names_classes_the_map_labels_but_never_assigns(mapset, tmp_path):
    """Labels outside the map's range of values are read, not numbers."""
    _, reference = make_synthetic()
    gs.mapcalc("mid = if(s_b1 > 120, 21, 31)", quiet=True)
    rules = "11|grass\n21|trees\n31|houses\n41|lake\n"
    gs.write_command("r.category", map="mid", rules="-", separator="pipe", stdin=rules)
    # The oracle: r.category asked for those values by number.
    asked = gs.read_command(
        "r.category", map="mid", cats="11,21,31,41", separator="pipe"
    )
    assert asked.split("\n")[:4] == ["11|grass", "21|trees", "31|houses", "41|lake"]
    run_ok(
        "i.ann.classify",
        "e",
        classified="mid",
        reference=reference,
        report=tmp_path / "mid.json",
    )
    report = json.loads((tmp_path / "mid.json").read_text())
    labels = {c["value"]: c["label"] for c in report["classes"]}
    assert labels[11] == "grass" and labels[41] == "lake"
    assert labels[21] == "trees" and labels[31] == "houses"
    # 11 is labelled in the map, so the reference's 11 is no unseen class.
    assert report["unseen_reference_classes"] == []
