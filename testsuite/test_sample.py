"""i.ann.sample: points to label where the classification is unsure.

Constructed scenes whose uncertain cells are known: a band along a class
boundary in a hand-made uncertainty map, and the uncertainty of a real
network trained from a few points. The points must fall there far above
the band's share of the area; distances, exclusion, the MASK and the
columns are checked against the points' coordinates read back (v.out.ascii,
r.what), with SciPy's distances as the oracle.
"""

import json

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

import grass.script as gs
from conftest import assert_fails, run_ok, train_bundle

RES = 30
ROWS, COLS = 60, 80  # the mapset fixture's region
BOUNDARY = 40  # classes 1 | 2, 3 meet between columns 40 and 41
BAND = 3  # cells each side of the boundary in the uncertain band


def make_maps(prefix=""):
    """A class map (1 west; 2, 3 east) and an uncertainty map of 0.9 in a
    band of 2 * BAND columns along the boundary, 0.05 elsewhere."""
    gs.mapcalc(
        "{p}classes = if(col() <= {b}, 1, if(row() <= 30, 2, 3))".format(
            p=prefix, b=BOUNDARY
        ),
        overwrite=True,
        quiet=True,
    )
    gs.write_command(
        "r.category",
        map=prefix + "classes",
        rules="-",
        separator="pipe",
        stdin="1|forest\n2|water\n3|urban\n",
    )
    gs.mapcalc(
        "{p}uncertain = if(abs(col() - {c}) < {w}, 0.9, 0.05)".format(
            p=prefix, c=BOUNDARY + 0.5, w=BAND
        ),
        overwrite=True,
        quiet=True,
    )
    return prefix + "classes", prefix + "uncertain"


def points_of(name, columns="cat,class,predicted,predicted_label,uncertainty"):
    """Coordinates and attribute rows of a point map, read back from GRASS."""
    xy = np.array(
        [
            [float(v) for v in line.split("|")[:2]]
            for line in gs.read_command(
                "v.out.ascii", input=name, format="point", separator="pipe"
            ).splitlines()
        ]
    )
    rows = [
        line.split("|")
        for line in gs.read_command(
            "v.db.select", map=name, columns=columns, flags="c", separator="pipe"
        ).splitlines()
    ]
    return xy, rows


def cells_of(xy):
    """(row, col) of the cells (1-based, as r.mapcalc's) the points fall in."""
    region = gs.region()
    cols = np.floor((xy[:, 0] - region["w"]) / region["ewres"]).astype(int) + 1
    rows = np.floor((region["n"] - xy[:, 1]) / region["nsres"]).astype(int) + 1
    return rows, cols


def in_band(cols):
    return np.abs(cols - (BOUNDARY + 0.5)) < BAND


def labelled_points(name, cells):
    """A point map at the centres of cells (1-based row, col), class column."""
    region = gs.region()
    lines = "".join(
        "{}|{}|{}\n".format(
            region["w"] + (c - 0.5) * RES, region["n"] - (r - 0.5) * RES, v
        )
        for r, c, v in cells
    )
    gs.write_command(
        "v.in.ascii",
        input="-",
        output=name,
        x=1,
        y=2,
        columns="x double precision, y double precision, class integer",
        stdin=lines,
        quiet=True,
    )


def test_points_fall_where_the_map_is_uncertain(mapset):
    classes, uncertain = make_maps()
    band_share = in_band(np.arange(1, COLS + 1)).mean()
    shares = {}
    for method in ("balanced", "uncertain", "random"):
        run_ok(
            "i.ann.sample",
            classified=classes,
            uncertainty=uncertain,
            npoints=40,
            distance=2 * RES,
            method=method,
            output="batch_" + method,
        )
        xy, rows = points_of("batch_" + method)
        assert len(xy) == 40
        shares[method] = in_band(cells_of(xy)[1]).mean()
    # The band is 7.5 % of the area; the points weighted by uncertainty fall
    # there far more often, the most uncertain ones always, random ones at
    # about the area's share.
    assert shares["uncertain"] == 1.0
    assert shares["balanced"] > 4 * band_share
    assert shares["random"] < 3 * band_share
    # balanced does not spend the batch on the band alone: every predicted
    # class gets points, at least a sixth of the batch each (half the batch
    # is shared equally among the three).
    xy, rows = points_of("batch_balanced")
    predicted = np.array([int(r[2]) for r in rows])
    assert set(predicted) == {1, 2, 3}
    assert min(np.bincount(predicted)[1:]) >= 40 // 6


def test_distance_exclusion_mask_and_columns(mapset):
    classes, uncertain = make_maps()
    first = [(10, 38, 1), (20, 42, 2), (45, 41, 3), (50, 10, 1)]
    labelled_points("first", first)
    labelled_points("second", [(5, 40, 1)])
    # Points only in the west half's top and the east: a MASK.
    gs.mapcalc("allowed = if(col() > 45 || row() < 40, 1, null())", quiet=True)
    gs.run_command("r.mask", raster="allowed", quiet=True)
    distance = 3.5 * RES
    run_ok(
        "i.ann.sample",
        classified=classes,
        uncertainty=uncertain,
        training="first,second",
        npoints=60,
        distance=distance,
        output="batch",
        seed=7,
    )
    gs.run_command("r.mask", flags="r", quiet=True)
    xy, rows = points_of("batch")
    assert len(xy) == 60
    assert pdist(xy).min() >= distance
    existing = points_of("first", "cat")[0]
    existing = np.vstack([existing, points_of("second", "cat")[0]])
    assert cdist(xy, existing).min() >= distance
    r, c = cells_of(xy)
    assert np.all((c > 45) | (r < 40))
    # At cell centres.
    region = gs.region()
    assert np.allclose((xy[:, 0] - region["w"]) % RES, RES / 2)
    # The columns: the class to fill (INTEGER, empty), the prediction and
    # the uncertainty, as the maps have them at the points (r.what).
    described = gs.read_command("db.describe", flags="c", table="batch")
    types = dict(
        (part.split(":")[1].strip().lower(), part.split(":")[2].strip().upper())
        for part in described.splitlines()
        if part.startswith("Column ")
    )
    assert types["class"] == "INTEGER" and types["predicted"] == "INTEGER"
    assert types["uncertainty"] in ("DOUBLE PRECISION", "REAL")
    assert all(row[1] == "" for row in rows)
    what = gs.read_command(
        "r.what",
        map=[classes, uncertain],
        coordinates=",".join("{},{}".format(x, y) for x, y in xy),
        separator="pipe",
    ).splitlines()
    assert [int(line.split("|")[3]) for line in what] == [int(row[2]) for row in rows]
    assert np.allclose(
        [float(line.split("|")[4]) for line in what], [float(row[4]) for row in rows]
    )
    labels = {"1": "forest", "2": "water", "3": "urban"}
    assert all(row[3] == labels[row[2]] for row in rows)


def test_labelled_batches_train_with_the_first_points(mapset, tmp_path):
    """The batch, once labelled, trains with the first points: i.ann.patches
    reads several maps (column and label column), each point's cell with
    the class given to it."""
    classes, uncertain = make_maps()
    labelled_points("first", [(10, 10, 1), (50, 70, 3)])
    run_ok(
        "i.ann.sample",
        classified=classes,
        uncertainty=uncertain,
        training="first",
        npoints=12,
        output="batch",
        label_column="name",
    )
    # The person's part: the class of the reference at each point (here the
    # class map itself), its name too.
    gs.run_command("v.what.rast", map="batch", raster=classes, column="class")
    gs.run_command(
        "v.db.update", map="batch", column="name", query_column="predicted_label"
    )
    gs.run_command("v.db.addcolumn", map="first", columns="name varchar(20)")
    gs.run_command("v.db.update", map="first", column="name", value="first point")
    gs.mapcalc("b1 = row() + col()", quiet=True)
    result = run_ok(
        "i.ann.patches",
        input="b1",
        training="first,batch",
        column="class",
        label_column="name",
        output=tmp_path / "patches",
        size=8,
        number=14,
        validation=0,
        min_labelled=1,
        sampling="random",
    )
    assert "Traceback" not in result.stderr
    metadata = json.loads((tmp_path / "patches" / "metadata.json").read_text())
    assert metadata["reference"] == "first@{m},batch@{m}".format(m=mapset)
    given = {
        int(v)
        for v in gs.read_command(
            "v.db.select", map="batch", columns="class", flags="c"
        ).split()
    } | {1, 3}
    assert {c["value"] for c in metadata["classes"]} == given
    # Where both maps label a class, the first map's name is kept.
    names = {c["value"]: c["label"] for c in metadata["classes"]}
    assert names[1] == "first point" and names[3] == "first point"
    assert names.get(2, "water") == "water"
    labels = np.load(tmp_path / "patches" / "train_labels.npy")
    assert {int(v) for v in np.unique(labels)} - {255} == set(
        range(len(metadata["classes"]))
    )


def test_same_seed_same_points_in_any_number_of_processes(mapset):
    classes, uncertain = make_maps()
    gs.run_command("g.region", rows=600, cols=80)  # three parts of 200 rows
    gs.mapcalc("big_classes = {}".format(classes), quiet=True)
    # Labels that are numbers (as v.to.rast of a column without names
    # gives): a text column all the same, without v.in.ascii's warning.
    gs.write_command(
        "r.category",
        map="big_classes",
        rules="-",
        separator="pipe",
        stdin="1|1\n2|2\n3|3\n",
    )
    gs.mapcalc("big_uncertain = {}".format(uncertain), quiet=True)
    points = {}
    for name, seed, nprocs in (("a", 3, 1), ("b", 3, 3), ("c", 4, 1)):
        result = run_ok(
            "i.ann.sample",
            classified="big_classes",
            uncertainty="big_uncertain",
            npoints=50,
            seed=seed,
            nprocs=nprocs,
            output=name,
        )
        assert "WARNING" not in result.stderr, result.stderr
        points[name] = points_of(name)
        assert all(row[2] == row[3] for row in points[name][1])
    assert np.array_equal(points["a"][0], points["b"][0])
    assert points["a"][1] == points["b"][1]
    assert not np.array_equal(points["a"][0], points["c"][0])


def test_points_near_the_boundary_a_network_is_unsure_of(mapset, tmp_path):
    """A real network trained from a few points on a scene of two classes
    whose bands change gradually across their boundary: it is unsure there,
    and that is where the points go."""
    gs.mapcalc(
        "b1 = 100 + 100 / (1 + exp(-(col() - {}) / 1.5)) + row() % 7".format(
            BOUNDARY + 0.5
        ),
        quiet=True,
    )
    gs.mapcalc("b2 = (row() * 13 + col() * 7) % 11", quiet=True)
    gs.mapcalc("reference = if(col() <= {}, 1, 2)".format(BOUNDARY), quiet=True)
    rng = np.random.default_rng(5)
    cells = [
        (r, c, 1 if c <= BOUNDARY else 2)
        for r, c in zip(rng.integers(1, ROWS + 1, 40), rng.integers(1, COLS + 1, 40))
    ]
    labelled_points("first", cells)
    run_ok(
        "i.ann.patches",
        input="b1,b2",
        training="first",
        column="class",
        output=tmp_path / "patches",
        size=16,
        number=40,
        validation=0,
        sampling="random",
    )
    model = train_bundle(tmp_path / "patches", tmp_path / "model", epochs=80)
    run_ok(
        "i.ann.classify",
        input="b1,b2",
        model=model,
        output="predicted",
        uncertainty="unsure",
    )
    run_ok(
        "i.ann.sample",
        classified="predicted",
        uncertainty="unsure",
        training="first",
        npoints=20,
        output="batch",
    )
    xy, _rows = points_of("batch")
    share = in_band(cells_of(xy)[1]).mean()
    band_share = in_band(np.arange(1, COLS + 1)).mean()
    assert share > 3 * band_share, (share, band_share)


def test_bad_input(mapset):
    classes, uncertain = make_maps()
    gs.mapcalc("real_classes = float({})".format(classes), quiet=True)
    gs.mapcalc("unlabelled = if(col() <= {}, 1, 2)".format(BOUNDARY), quiet=True)
    gs.mapcalc("too_large = 2 * {}".format(uncertain), quiet=True)
    gs.run_command("g.region", res=60)
    gs.mapcalc("coarse_uncertain = {}".format(uncertain), quiet=True)
    gs.run_command("g.region", res=RES)
    common = dict(npoints=10, output="batch")
    assert_fails(
        gs_run(classified="real_classes", uncertainty=uncertain, **common),
        "<real_classes>",
        "not a class map",
    )
    assert_fails(
        gs_run(classified="unlabelled", uncertainty=uncertain, **common),
        "<unlabelled>",
        "no category labels",
    )
    assert_fails(
        gs_run(classified=classes, uncertainty="coarse_uncertain", **common),
        "<coarse_uncertain>",
        "not on the grid",
    )
    assert_fails(
        gs_run(classified=classes, uncertainty="too_large", **common),
        "<too_large>",
        "not 0 to 1",
    )
    assert_fails(
        gs_run(classified=classes, uncertainty=uncertain, column="predicted", **common),
        "<predicted>",
    )
    assert_fails(
        gs_run(classified=classes, uncertainty=uncertain, training="nowhere", **common),
        "<nowhere>",
    )
    # 80 x 60 cells hold 12 points 20 cells apart, not 20.
    assert_fails(
        gs_run(
            classified=classes,
            uncertainty=uncertain,
            npoints=20,
            distance=20 * RES,
            output="batch",
        ),
        "points fit at a distance of",
        "not the 20 asked",
    )
    assert not gs.find_file("batch", element="vector")["fullname"]
    run_ok("i.ann.sample", classified=classes, uncertainty=uncertain, **common)
    before = points_of("batch")[0]
    assert_fails(
        gs_run(classified=classes, uncertainty=uncertain, seed=2, **common),
        "<batch>",
        "--overwrite",
    )
    assert np.array_equal(points_of("batch")[0], before)
    leftovers = gs.list_strings("vector", pattern="iann_*")
    assert leftovers == []


def gs_run(**options):
    from conftest import run

    return run("i.ann.sample", **options)


def test_pool_is_the_same_whatever_the_order_of_parts():
    """The library's merge: candidates of parts in any order equal those of
    the whole (the property nprocs relies on), with an exact oracle: the
    largest keys sorted by NumPy."""
    from iann.labelling.propose import Pool

    rng = np.random.default_rng(0)
    keys = rng.random(1000)
    rows = np.arange(1000) // 50
    cols = np.arange(1000) % 50

    def pool_of(index):
        pool = Pool()
        pool.add(
            30,
            keys=keys[index],
            rows=rows[index],
            cols=cols[index],
            classes=np.zeros(len(index), np.int32),
            uncertainty=np.zeros(len(index), np.float32),
        )
        pool.shrink(30)
        return pool

    parts = np.array_split(rng.permutation(1000), 7)
    merged = Pool()
    for part in parts:
        merged.merge(pool_of(part), 30)
    best = np.sort(np.argsort(-keys)[:30])
    assert np.array_equal(np.sort(merged.rows * 50 + merged.cols), best)
    assert not merged.complete


def test_rows_read_in_chunks_give_the_candidates_of_one_read():
    """scan_rows over chunks of rows (with the filter of a full pool) keeps
    the cells of the best keys of the whole map, as sorting all keys does."""
    from iann.labelling.propose import cell_keys, row_uniforms, scan_rows

    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, (50, 40)).astype(np.int32)
    classes[3, 5] = -1
    uncertainty = rng.random((50, 40)).astype(np.float32)
    uncertainty[7, 8] = np.nan
    size = 25
    for method in ("balanced", "uncertain", "random"):
        pools = {}
        for first in range(0, 50, 7):
            scan_rows(
                classes[first : first + 7],
                uncertainty[first : first + 7],
                first,
                method,
                9,
                size,
                pools,
            )
        keys = cell_keys(
            method,
            uncertainty,
            np.stack([row_uniforms(9, row, 40) for row in range(50)]),
        )
        valid = (classes >= 0) & np.isfinite(uncertainty)
        groups = [0, 1, 2] if method == "balanced" else [-1]
        for value in groups:
            cells = valid & ((classes == value) if value >= 0 else True)
            best = np.argsort(-np.where(cells, keys, -np.inf), axis=None)[:size]
            pool = pools[value]
            pool.shrink(size)
            assert sorted(pool.rows * 40 + pool.cols) == sorted(best)
            assert pool.cells == cells.sum()
            assert pool.mass / 2**24 == pytest.approx(
                uncertainty[cells].sum(dtype=np.float64)
            )


def test_a_quota_the_distance_leaves_unfilled_goes_to_the_best_keys_left():
    """A class whose cells lie in one 2 x 5 clump (distance 3 cells) can
    give only one point, not its quota: the points it leaves go to the
    best keys left in the other class, and the count is met. Oracle: the
    keys, set by hand."""
    from iann.labelling.propose import Pool, allocate, choose

    def pool_of(value, rows, cols, keys):
        n = len(rows)
        return Pool(
            keys=np.asarray(keys, np.float64),
            rows=np.asarray(rows),
            cols=np.asarray(cols),
            classes=np.full(n, value, np.int32),
            uncertainty=np.full(n, 0.5, np.float32),
            cells=n,
            mass=n * 2**23,
        )

    # Class 1: the clump at rows 0-1, columns 0-4; its best key is the
    # clump's centre, from which every other cell is closer than 3.
    clump_rows, clump_cols = np.divmod(np.arange(10), 5)
    clump_keys = -np.hypot(clump_rows - 0, clump_cols - 2)
    # Class 2: 40 cells 5 apart, far from the clump, keys in random order.
    spread_rows = 20 + 5 * (np.arange(40) // 8)
    spread_cols = 5 * (np.arange(40) % 8)
    spread_keys = np.random.default_rng(3).random(40)
    pools = {
        1: pool_of(1, clump_rows, clump_cols, clump_keys),
        2: pool_of(2, spread_rows, spread_cols, spread_keys),
    }
    npoints = 10
    assert allocate(npoints, pools)[1] > 1  # the quota the clump cannot fill

    def cell_centre(rows, cols):
        return np.asarray(cols, float) + 0.5, -np.asarray(rows, float) - 0.5

    proposal = choose(pools, npoints, "balanced", 3.0, [], cell_centre)
    assert len(proposal.rows) == npoints
    taken = set(zip(proposal.rows.tolist(), proposal.cols.tolist()))
    best_spread = np.argsort(-spread_keys)[: npoints - 1]
    expected = {(0, 2)} | {
        (int(spread_rows[i]), int(spread_cols[i])) for i in best_spread
    }
    assert taken == expected
    assert np.array_equal(proposal.x, proposal.cols + 0.5)
    assert np.array_equal(proposal.y, -proposal.rows - 0.5)


def test_ctrl_c_while_reading(mapset):
    """Ctrl-C in the terminal (the whole process group, the reading
    processes too) while the maps are read: a GRASS error, no traceback,
    no map."""
    import os
    import signal
    import subprocess

    gs.run_command("g.region", rows=6000, cols=6000)
    gs.mapcalc("big = if(col() < 3000, 1, 2)", quiet=True)
    gs.write_command(
        "r.category", map="big", rules="-", separator="pipe", stdin="1|a\n2|b\n"
    )
    gs.mapcalc("big_u = float(row() % 100) / 100", quiet=True)
    process = subprocess.Popen(
        [
            "i.ann.sample",
            "classified=big",
            "uncertainty=big_u",
            "npoints=50",
            "nprocs=2",
            "output=batch",
        ],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, GRASS_MESSAGE_FORMAT="plain"),
    )
    # The first progress step past 0 ("0..5.."): reading has begun.
    seen = ""
    while seen.count("..") < 2:
        character = process.stderr.read(1)
        assert character, seen
        seen += character
    os.killpg(process.pid, signal.SIGINT)
    stderr = seen + process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode != 0
    assert "ERROR: Interrupted; nothing was written" in stderr, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert not gs.find_file("batch", element="vector")["fullname"]
    assert gs.list_strings("vector", pattern="iann_*") == []
