"""The sampling and tiling maths, without a GRASS session: pure NumPy.

Each function is compared with a brute-force oracle written here.
"""

import numpy as np
import pytest

from iann.formats.dataset import UNLABELLED
from iann.grass import CELL_NULL
from iann.patches.sampling import (
    draw_origins,
    encode_labels,
    usable_origins,
    validation_blocks,
    window_sums,
)
from iann.predict.tiling import block_grid, tiling_margin, tile_windows, Window


def test_window_sums_equal_brute_force():
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 2, size=(13, 17)).astype(bool)
    size = 4
    sums = window_sums(cells, size)
    assert sums.shape == (10, 14)
    for r in range(10):
        for c in range(14):
            assert sums[r, c] == cells[r : r + size, c : c + size].sum()


def test_encode_labels_maps_values_to_indices():
    values = np.array([-3, 11, 400])
    cells = np.array([[11, CELL_NULL, -3], [400, 11, CELL_NULL]], dtype=np.int32)
    expected = [[1, UNLABELLED, 0], [2, 1, UNLABELLED]]
    np.testing.assert_array_equal(encode_labels(cells, values), expected)
    # Values too far apart for a lookup table take the searchsorted path.
    far = np.array([0, 5_000_000])
    cells = np.array([[5_000_000, 0, CELL_NULL]], dtype=np.int32)
    np.testing.assert_array_equal(encode_labels(cells, far), [[1, 0, UNLABELLED]])


def test_usable_origins_need_labels_no_nulls_and_a_labelled_centre():
    labelled = np.zeros((10, 10), dtype=bool)
    labelled[5, 5] = True
    nulls = np.zeros((10, 10), dtype=bool)
    nulls[0, 0] = True
    size = 3
    ok = usable_origins(nulls, labelled, size, 1, keep_nulls=False)
    centred = usable_origins(nulls, labelled, size, 1, False, centred=True)
    for r in range(8):
        for c in range(8):
            window = (slice(r, r + size), slice(c, c + size))
            expected = labelled[window].sum() >= 1 and not nulls[window].any()
            assert ok[r, c] == expected
            assert centred[r, c] == (expected and labelled[r + 1, c + 1])
    assert centred.sum() == 1 and centred[4, 4]


def test_validation_blocks_are_whole_blocks():
    rng = np.random.default_rng(1)
    cells, ids = validation_blocks((10, 13), (4, 5), 0.25, rng)
    # 3 x 3 blocks, round(0.25 x 9) = 2 of them for validation.
    assert len(ids) == 2
    for block in range(9):
        br, bc = divmod(block, 3)
        part = cells[br * 4 : br * 4 + 4, bc * 5 : bc * 5 + 5]
        assert part.all() if block in ids else not part.any()


@pytest.mark.parametrize("method", ["random", "grid", "balanced"])
def test_draw_origins(method):
    rng = np.random.default_rng(2)
    candidates = rng.random((20, 30)) < 0.5
    centre = np.zeros((22, 32), dtype=np.uint8)
    centre[:5] = 1  # class 1: the top rows only, a minority of the centres
    flat = draw_origins(candidates, 40, method, rng, 3, 2, centre)
    assert len(flat) == len(set(flat.tolist())) == 40
    rows, cols = flat // 30, flat % 30
    assert candidates[rows, cols].all()
    if method == "grid":
        assert (rows % 2 == 0).all() and (cols % 2 == 0).all()
    if method == "balanced":
        # Equal shares by the class of the centre cell (row + 1).
        assert (centre[rows + 1, cols + 1] == 1).sum() == 20
    # More than there are candidates: all of them.
    everything = draw_origins(candidates, 10**6, "random", rng, 3, 4, centre)
    assert sorted(everything.tolist()) == np.flatnonzero(candidates).tolist()


def test_blocks_and_tiles_cover_the_region_once():
    rows, cols, margin = 50, 37, 4
    seen = np.zeros((rows, cols), dtype=int)
    for block in block_grid(rows, cols, 16, margin):
        core, read = block.core, block.read
        assert read.row0 == max(0, core.row0 - margin)
        assert read.col1 == min(cols, core.col1 + margin)
        seen[core.row0 : core.row1, core.col0 : core.col1] += 1
    assert (seen == 1).all()
    tiles = tile_windows(Window(0, 10, 0, 37), 8, margin, Window(0, 14, 0, 37))
    assert [t[0].col0 for t in tiles] == [0, 8, 16, 24, 32]
    assert tiles[1][1].col0 == 4 and tiles[-1][1].col1 == 37


def test_tiling_margin_is_half_the_field_rounded_up_to_the_multiple():
    assert tiling_margin(33) == 16
    assert tiling_margin(33, 8) == 16
    assert tiling_margin(35, 8) == 24
    assert tiling_margin(1, 4) == 0
