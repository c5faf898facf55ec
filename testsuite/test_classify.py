"""i.ann.classify: tiled prediction, map metadata, accuracy report, bad input."""

import json

import numpy as np
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


def test_tiled_equals_whole(mapset, trained_bundle):
    bands, _ = make_synthetic()
    gs.run_command("g.region", rows=61, cols=83)
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="whole",
        tile_size=4096,
    )
    run_ok(
        "i.ann.classify",
        input=",".join(bands),
        model=trained_bundle,
        output="tiled",
        tile_size=16,
    )
    np.testing.assert_array_equal(
        read_map("whole", null=-1, dtype=np.int32),
        read_map("tiled", null=-1, dtype=np.int32),
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
