"""i.ann.classify: tiled prediction, map metadata, accuracy report, bad input."""

import json

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
    assert report["overall_accuracy"] > report["majority_share"]
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
    # Tiles several times narrower than the region, odd region sizes, blocks
    # that are no multiple of the tiles; for the U-Net tiles and blocks keep
    # to its 4-cell pooling grid.
    for name, options in (
        ("tiled", {"tile_size": 16}),
        ("blocks", {"block_size": 24, "tile_size": 16}),
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
        "2 bands",
        str(trained_bundle),
    )
    assert_fails(
        run("i.ann.classify", input=",".join(bands), model=tmp_path, output="out"),
        str(tmp_path),
        "not a model bundle",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text(
        (trained_bundle / "metadata.json").read_text()
    )
    (broken / "model.keras").write_text("not a model")
    assert_fails(
        run("i.ann.classify", input=",".join(bands), model=broken, output="out"),
        str(broken),
    )
    assert_fails(
        run(
            "i.ann.classify",
            input="nomap," + bands[1],
            model=trained_bundle,
            output="out",
        ),
        "nomap",
    )
    gs.mapcalc("nothing = null()", quiet=True)
    assert_fails(
        run(
            "i.ann.classify",
            input="nothing,nothing",
            model=trained_bundle,
            output="out",
        ),
        "No cell",
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
    from iann.augmentation import dihedral, undo_dihedral

    a = np.arange(5 * 7 * 3).reshape(5, 7, 3)
    seen = set()
    for k in range(8):
        turned = dihedral(a, k)
        np.testing.assert_array_equal(undo_dihedral(turned, k), a)
        seen.add(turned.tobytes() + bytes(turned.shape))
    assert len(seen) == 8  # eight different views of a non-square array


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
    orig = read_map("orig", dtype=np.int32)
    assert (read_map("transfer", dtype=np.int32) == orig).mean() > 0.95
    assert (read_map("naive", dtype=np.int32) == orig).mean() < 0.8


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
    np.testing.assert_array_equal(read_map("big"), read_map("small"))


def test_failure_restores_region_and_leaves_nothing(mapset, trained_bundle):
    bands, _ = make_synthetic()
    before = gs.region()
    result = run(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="never",
        probabilities="neverp",
        segments="nosegments",
    )
    assert_fails(result, "nosegments")
    assert gs.region() == before
    assert gs.list_strings("raster", pattern="never*", mapset=".") == []
    assert gs.list_strings("raster", pattern="tmp_iann*", mapset=".") == []


def test_group_input_equals_map_list(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.run_command("i.group", group="grp", input=",".join(bands), quiet=True)
    run_ok("i.ann.classify", group="grp", model=trained_bundle, output="by_group")
    run_ok(
        "i.ann.classify", input=",".join(bands), model=trained_bundle, output="by_list"
    )
    np.testing.assert_array_equal(read_map("by_group"), read_map("by_list"))
    assert_fails(
        run("i.ann.classify", group="nogroup", model=trained_bundle, output="x"),
        "nogroup",
    )


def test_fcn_prediction_form_gives_the_same_probabilities(trained_bundle, unet_bundle):
    import keras

    from iann.models import build_fcn, fcn_for_prediction

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
