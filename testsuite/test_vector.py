"""Vector reference data: points, lines and areas in i.ann.patches and
i.ann.classify, accuracy from a point sample, and the vector output.

Vector maps are made with v.in.ascii from coordinates computed here, so
the cells they must label are known independently of v.to.rast.
"""

import json
import os
import re
import subprocess

import numpy as np
import pytest

import grass.script as gs

from conftest import (
    REPO,
    SYNTHETIC_CLASSES,
    assert_fails,
    make_synthetic,
    read_map,
    run,
    run_ok,
    train_bundle,
)

RES = 30.0  # the test region: n=1800 s=0 e=2400 w=0 res=30, 60 x 80 cells
NORTH = 1800.0


def centre(row, col):
    """Map coordinates of a cell's centre in the test region."""
    return 15.0 + RES * col, NORTH - 15.0 - RES * row


def point_vector(name, cells, values, labels=None, value_type="integer"):
    """A point vector map with a class column (and a name column)."""
    lines = []
    for (row, col), value in zip(cells, values):
        x, y = centre(row, col)
        label = (labels or SYNTHETIC_CLASSES).get(int(value), str(value))
        lines.append("{}|{}|{}|{}".format(x, y, value, label))
    gs.write_command(
        "v.in.ascii",
        input="-",
        output=name,
        format="point",
        separator="pipe",
        columns="x double precision, y double precision, "
        "class {}, name varchar(20)".format(value_type),
        x=1,
        y=2,
        stdin="\n".join(lines) + "\n",
        quiet=True,
        overwrite=True,
    )


def random_cells(number, seed, exclude=()):
    """Distinct random cells of the test region, not in `exclude`."""
    rng = np.random.default_rng(seed)
    flat = rng.permutation(60 * 80)
    taken = {r * 80 + c for r, c in exclude}
    flat = [f for f in flat if f not in taken][:number]
    return [(f // 80, f % 80) for f in flat]


def leftover_temporary_maps():
    return gs.list_strings("raster", pattern="iann_*") + gs.list_strings(
        "vector", pattern="iann_*"
    )


def load(folder):
    meta = json.loads((folder / "metadata.json").read_text())
    arrays = {k: np.load(folder / f) for k, f in meta["files"].items()}
    return meta, arrays


def labelled_cells(meta, arrays, part):
    """{(row, col): class value} of the labelled cells of a part's patches."""
    values = [c["value"] for c in meta["classes"]]
    found = {}
    for i, (row, col) in enumerate(meta["sampling"]["origins"][part]):
        labels = arrays[part + "_labels"][i]
        for r, c in zip(*np.nonzero(labels != 255)):
            found[(row + r, col + c)] = values[labels[r, c]]
    return found


def test_points_label_their_cells_and_centre_the_patches(mapset, tmp_path):
    bands, reference = make_synthetic()
    truth = read_map(reference, null=-1, dtype=np.int32)
    cells = [c for c in random_cells(260, seed=5) if truth[c] != -1][:200]
    point_vector("pts", cells, [truth[c] for c in cells])
    out = tmp_path / "ds"
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        training="pts",
        column="class",
        label_column="name",
        output=out,
        size=16,
        number=80,
        seed=2,
    )
    meta, arrays = load(out)
    assert meta["reference_vector"]["vector"].startswith("pts@")
    assert meta["reference_vector"]["column"] == "class"
    assert meta["reference_vector"]["label_column"] == "name"
    assert meta["sampling"]["min_labelled_unit"] == "cells"
    assert [c["value"] for c in meta["classes"]] == [11, 21, 31]
    assert [c["label"] for c in meta["classes"]] == ["water", "forest", "urban"]
    expected = {c: int(truth[c]) for c in cells}
    for part in ("train", "validation"):
        assert meta["counts"][part]["patches"] > 0
        found = labelled_cells(meta, arrays, part)
        # Only the points' cells are labelled, each with its point's class.
        assert found and set(found) <= set(expected)
        assert all(found[c] == expected[c] for c in found)
        # Every patch is centred on a point.
        for row, col in meta["sampling"]["origins"][part]:
            assert (row + 8, col + 8) in expected
    # A random split puts each point on one side: no point is both trained
    # on and validated with, and validation keeps about its share of them.
    train_points = set(labelled_cells(meta, arrays, "train"))
    validation_points = set(labelled_cells(meta, arrays, "validation"))
    assert not train_points & validation_points
    assert len(validation_points) >= 0.1 * len(train_points | validation_points)
    assert leftover_temporary_maps() == []


def test_lines_and_areas_label_the_cells_they_cover(mapset, tmp_path):
    bands, _reference = make_synthetic()
    # Two rectangles (areas) and a horizontal line, written in GRASS's
    # standard ASCII format: the cells to label are known by construction.
    x0, y0 = centre(40, 10)
    x1, _ = centre(40, 60)
    ascii_map = """B  5
 300 1500
 900 1500
 900 1200
 300 1200
 300 1500
C  1 1
 600 1350
 1 1
B  5
 1500 900
 2100 900
 2100 600
 1500 600
 1500 900
C  1 1
 1800 750
 1 2
L  2 1
 {x0} {y0}
 {x1} {y0}
 1 3
""".format(x0=x0, y0=y0, x1=x1)
    gs.write_command(
        "v.in.ascii",
        input="-",
        output="shapes",
        format="standard",
        flags="n",
        stdin=ascii_map,
        quiet=True,
    )
    gs.run_command(
        "v.db.addtable", map="shapes", columns="class integer, name text", quiet=True
    )
    for cat, value, label in ((1, 21, "forest"), (2, 31, "urban"), (3, 11, "water")):
        gs.run_command(
            "v.db.update", map="shapes", column="class", value=value, where=f"cat={cat}"
        )
        gs.run_command(
            "v.db.update",
            map="shapes",
            column="name",
            query_column=f"'{label}'",
            where=f"cat={cat}",
        )
    expected = np.full((60, 80), -1)
    expected[10:20, 10:30] = 21  # x 300-900, y 1500-1200
    expected[30:40, 50:70] = 31  # x 1500-2100, y 900-600
    expected[40, 10:61] = 11
    out = tmp_path / "ds"
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        training="shapes",
        column="class",
        label_column="name",
        output=out,
        size=8,
        number=200,
        seed=1,
    )
    meta, arrays = load(out)
    assert [c["label"] for c in meta["classes"]] == ["water", "forest", "urban"]
    found = {}
    for part in ("train", "validation"):
        found.update(labelled_cells(meta, arrays, part))
    assert found
    assert all(expected[c] == v for c, v in found.items())
    # All three geometries gave patches.
    assert set(found.values()) == {11, 21, 31}


def test_bad_vector_input(mapset, tmp_path):
    bands, reference = make_synthetic()
    point_vector("pts", [(5, 5), (30, 40)], [11, 21])
    point_vector("real", [(5, 5), (30, 40)], [1.5, 2.5], value_type="double precision")
    x, y = 5000.0, 5000.0
    gs.write_command(
        "v.in.ascii",
        input="-",
        output="far",
        format="point",
        separator="pipe",
        columns="x double precision, y double precision, class integer",
        x=1,
        y=2,
        stdin=f"{x}|{y}|11\n",
        quiet=True,
    )
    common = dict(input=",".join(bands), output=tmp_path / "ds", size=8, number=5)
    assert_fails(
        run("i.ann.patches", training="pts", column="nosuch", **common),
        "<pts@",
        "no column <nosuch>",
    )
    assert_fails(
        run("i.ann.patches", training="real", column="class", **common),
        "Column <class>",
        "<real@",
        "not integer",
    )
    assert_fails(
        run("i.ann.patches", training="far", column="class", **common),
        "<far@",
        "no features with a value in column <class>",
    )
    # A table without any class value: refused before anything is made (a
    # classification too, which would otherwise run before its assessment).
    gs.run_command("v.edit", map="empty", tool="create", quiet=True)
    gs.run_command("v.db.addtable", map="empty", columns="class integer", quiet=True)
    assert_fails(
        run("i.ann.patches", training="empty", column="class", **common),
        "<empty@",
        "no features with a value in column <class>",
    )
    result = run(
        "i.ann.classify",
        input=",".join(bands + bands[:1]),
        model=REPO / "testsuite" / "data" / "bundle_v1",
        output="not_made",
        reference_vector="empty",
        column="class",
    )
    assert_fails(result, "<empty@", "no features with a value in column <class>")
    assert "Classifying" not in result.stderr
    assert not gs.find_file("not_made", element="cell")["fullname"]
    assert_fails(
        run("i.ann.patches", training="nosuchvector", column="class", **common),
        "Vector map <nosuchvector> not found",
        "v.import",
    )
    both = run(
        "i.ann.patches", training="pts", column="class", reference=reference, **common
    )
    assert_fails(both, "reference", "training")
    assert_fails(run("i.ann.patches", training="pts", **common), "training", "column")
    assert not (tmp_path / "ds").exists()
    assert leftover_temporary_maps() == []


@pytest.fixture(scope="module")
def point_samples(grass_session, tmp_path_factory):
    """A few hundred training points and a held-out point set on the scene."""
    folder = tmp_path_factory.mktemp("points")
    gs.run_command("g.mapset", flags="c", mapset="vector_points", quiet=True)
    gs.run_command("g.region", n=1800, s=0, e=2400, w=0, res=30, quiet=True)
    bands, reference = make_synthetic()
    truth = read_map(reference, null=-1, dtype=np.int32)
    cells = [c for c in random_cells(900, seed=11) if truth[c] != -1]
    training, held_out = cells[:300], cells[300:600]
    point_vector("train_pts", training, [truth[c] for c in training])
    point_vector("test_pts", held_out, [truth[c] for c in held_out])
    run_ok(
        "i.ann.patches",
        input=",".join(bands),
        training="train_pts",
        column="class",
        output=folder / "patches",
        size=16,
        number=300,
        seed=1,
    )
    bundle = train_bundle(folder / "patches", folder / "model", epochs=12)
    run_ok("i.ann.classify", input=",".join(bands), model=bundle, output="from_pts")
    mapset = gs.gisenv()["MAPSET"]
    gs.run_command("g.mapset", mapset="PERMANENT", quiet=True)
    return {
        "mapset": mapset,
        "bundle": bundle,
        "bands": bands,
        "held_out": held_out,
        "truth": truth,
    }


def in_points_mapset(samples):
    gs.run_command("g.mapset", mapset=samples["mapset"], quiet=True)
    gs.run_command("g.region", n=1800, s=0, e=2400, w=0, res=30, quiet=True)


def test_trained_from_points_and_assessed_with_held_out_points(point_samples, tmp_path):
    samples = point_samples
    in_points_mapset(samples)
    try:
        report_file = tmp_path / "report.json"
        result = run_ok(
            "i.ann.classify",
            "e",
            classified="from_pts",
            reference_vector="test_pts",
            column="class",
            report=report_file,
        )
        report = json.loads(report_file.read_text())
        mapped = read_map("from_pts", null=-1, dtype=np.int32)
        held_out = samples["held_out"]
        truth = np.array([samples["truth"][c] for c in held_out])
        predicted = np.array([mapped[c] for c in held_out])
        # The report compares exactly the cells under the held-out points.
        assert report["cells"] == len(held_out)
        assert report["overall_accuracy"] == pytest.approx((truth == predicted).mean())
        assert report["reference_vector"]["column"] == "class"
        assert "Overall accuracy" in result.stdout
        # Learnt from 300 points: well above always answering the majority.
        majority = np.bincount(truth).max() / len(truth)
        assert report["overall_accuracy"] >= max(0.8, majority + 0.2)
        # The strata of the area estimates are the map's classes over the
        # whole region (30 m cells: 900 square metres each), not the sample.
        for entry in report["area_adjusted"]["classes"]:
            cells = int((mapped == entry["value"]).sum())
            assert entry["mapped_area"] == pytest.approx(cells * 900.0)
    finally:
        gs.run_command("g.mapset", mapset="PERMANENT", quiet=True)


def test_classify_with_a_vector_reference(point_samples, tmp_path):
    samples = point_samples
    in_points_mapset(samples)
    try:
        report_file = tmp_path / "report.json"
        run_ok(
            "i.ann.classify",
            input=",".join(samples["bands"]),
            model=samples["bundle"],
            output="again",
            reference_vector="test_pts",
            column="class",
            report=report_file,
        )
        report = json.loads(report_file.read_text())
        mapped = read_map("again", null=-1, dtype=np.int32)
        truth = np.array([samples["truth"][c] for c in samples["held_out"]])
        predicted = np.array([mapped[c] for c in samples["held_out"]])
        matrix = np.array(report["confusion_matrix"]["matrix"])
        values = report["confusion_matrix"]["values"]
        for i, ref in enumerate(values):
            for j, pred in enumerate(values):
                assert matrix[i, j] == ((truth == ref) & (predicted == pred)).sum()
        assert leftover_temporary_maps() == []
        assert_fails(
            run(
                "i.ann.classify",
                "e",
                classified="again",
                reference_vector="test_pts",
                column="name",
            ),
            "Column <name>",
            "not integer",
        )
    finally:
        gs.run_command("g.mapset", mapset="PERMANENT", quiet=True)


def test_vector_output_and_minimum_area(mapset):
    gs.run_command("g.region", rows=12, cols=16, res=30, n=360, s=0, w=0, e=480)
    # Two halves and a one-cell island of class 3 inside class 1.
    gs.mapcalc("cls = if(row() == 4 && col() == 4, 3, if(col() <= 8, 1, 2))")
    gs.write_command(
        "r.category",
        map="cls",
        rules="-",
        separator="pipe",
        stdin="1|grass\n2|trees\n3|water",
    )
    run_ok(
        "i.ann.classify",
        "e",
        classified="cls",
        reference="cls",
        vector="cls_areas",
    )
    topology = gs.parse_command("v.info", map="cls_areas", flags="t")
    assert int(topology["areas"]) == 3
    rows = gs.read_command(
        "v.db.select", map="cls_areas", columns="value,label", flags="c"
    ).split()
    assert sorted(rows) == ["1|grass", "2|trees", "3|water"]
    gs.run_command(
        "v.to.rast",
        input="cls_areas",
        output="back",
        use="attr",
        attribute_column="value",
    )
    np.testing.assert_array_equal(read_map("back"), read_map("cls"))

    # A minimum area of two cells (1800 square metres) removes the island;
    # without a reference, -e only writes the vector map.
    result = run_ok(
        "i.ann.classify",
        "e",
        classified="cls",
        vector="cleaned",
        min_area=1800,
    )
    assert "Overall accuracy" not in result.stdout
    # -e with neither a reference nor a vector map has nothing to do.
    assert_fails(run("i.ann.classify", "e", classified="cls"), "<-e>", "<vector>")
    gs.run_command(
        "v.to.rast",
        input="cleaned",
        output="back2",
        use="attr",
        attribute_column="value",
    )
    expected = read_map("cls")
    expected[3, 3] = 1
    np.testing.assert_array_equal(read_map("back2"), expected)
    # The output exists: no --overwrite, no change.
    assert_fails(
        run("i.ann.classify", "e", classified="cls", reference="cls", vector="cleaned"),
        "<cleaned>",
        "--overwrite",
    )
    assert leftover_temporary_maps() == []


def test_area_estimates_in_a_latitude_longitude_project(grass_session, tmp_path):
    """Mapped areas are square metres on the ellipsoid, not square degrees."""
    project = grass_session["dbase"] / "latlong"
    subprocess.run(
        ["grass", "-c", "EPSG:4326", "-e", str(project)],
        check=True,
        capture_output=True,
    )
    script = (
        "g.region n=60.1 s=60 w=10 e=10.2 res=0.01 && "
        'r.mapcalc "cls = if(row() == 5 && col() == 5, 2, if(col() <= 10, 1, 2))" && '
        'r.mapcalc "ref = if(row() % 2, 1, 2)" && '
        "i.ann.classify -e classified=cls reference=ref report={} "
        "vector=areas min_area=1000000 && "
        "v.info -t areas".format(tmp_path / "report.json")
    )
    # The outer session's GISRC would point the new session at its mapset.
    env = {k: v for k, v in os.environ.items() if k != "GISRC"}
    result = subprocess.run(
        ["grass", str(project / "PERMANENT"), "--exec", "bash", "-c", script],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    # Independent oracle: the area of the WGS84 ellipsoid between two
    # parallels, b^2 dlon / 2 [q(lat2) - q(lat1)], for a column of 10 cells.
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    e = np.sqrt(e2)

    def q(latitude):
        s = np.sin(np.radians(latitude))
        return s / (1 - e2 * s * s) + np.log((1 + e * s) / (1 - e * s)) / (2 * e)

    per_column = a * a * (1 - e2) * np.radians(0.01) / 2 * (q(60.1) - q(60.0))
    areas = {c["value"]: c["mapped_area"] for c in report["area_adjusted"]["classes"]}
    # One cell (about 620,000 square metres here) of class 2 is an island in
    # class 1.
    cell = a * a * (1 - e2) * np.radians(0.01) / 2 * (q(60.06) - q(60.05))
    assert areas[1] == pytest.approx(10 * per_column - cell, rel=1e-6)
    assert areas[2] == pytest.approx(10 * per_column + cell, rel=1e-6)
    # min_area is in square metres here too: the one-cell island (smaller
    # than 1,000,000) goes, the two halves stay (in square degrees every
    # area would have been below the threshold).
    assert re.search(r"^areas=2$", result.stdout, re.MULTILINE), result.stdout
    assert areas[1] > 1e6  # square degrees would be 0.001
