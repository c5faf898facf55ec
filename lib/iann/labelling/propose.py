"""Choosing the cells to label next, from a class map and its uncertainty.

The n most uncertain cells are a poor batch: they lie side by side along
class borders and in the one land cover the network confuses most, so a
batch of them teaches it one thing many times. The methods:

- `balanced` (the default): the batch is shared among the predicted
  classes, half in equal parts and half in proportion to each class's sum
  of uncertainty; within a class, cells are drawn at random with
  probability proportional to their uncertainty;
- `uncertain`: the most uncertain cells;
- `random`: cells drawn uniformly, the baseline without a model.

Every method keeps a minimum distance between proposed points, and from
the points already labelled.

One pass over the map (rows in chunks, memory bounded by the number of
points asked, not the map): each cell gets a key, and each predicted class
keeps its `pool` best keys with their cells. Weighted sampling without
replacement is Efraimidis and Spirakis' A-ES: key = log(u) / w for a
uniform u and weight w; the cells of the largest keys are a weighted
sample, and keeping the largest keys of parts of the map then of their
union gives the same cells, so the map can be read in parts by several
processes. The random numbers of a row depend only on the seed and the
row, so the same seed gives the same points however the map is split.
The distance is then kept greedily, in key order: a cell is taken unless
it lies closer than the distance to a point taken or labelled.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from iann.errors import IannError

METHODS = ("balanced", "uncertain", "random")
# Each class keeps this many candidates per point asked: enough for the
# distance to reject most of them and still fill the batch (a pass with a
# pool four times larger is made when it does not).
POOL_PER_POINT = 16
# Cells read and keyed at a time (rows of the region, about 100 MB of
# working arrays).
CHUNK_CELLS = 2**21
# Weight of a cell of uncertainty 0 in `balanced`: small, but not 0, so
# that a class mapped with full confidence can still get its share.
LEAST_WEIGHT = 1e-6
MASS_UNIT = 2**24


@dataclass
class Pool:
    """The candidate cells of one predicted class, best key first once sorted."""

    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    cols: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    classes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    uncertainty: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    # Every cell of the class counted, and the sum of their uncertainty in
    # MASS_UNIT: integers, so that the sum does not depend on the order in
    # which parts of the map are added (nor then the points on `nprocs`).
    cells: int = 0
    mass: int = 0
    complete: bool = True  # the pool holds every cell of the class

    FIELDS = ("keys", "rows", "cols", "classes", "uncertainty")

    def add(self, size, **arrays):
        for name in self.FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), arrays[name]]))
        if len(self.keys) > 2 * size:
            self.shrink(size)

    def order(self):
        # Ties broken by position, so that the kept cells never depend on
        # the order in which parts of the map were added.
        return np.lexsort((self.cols, self.rows, -self.keys))

    def shrink(self, size):
        if len(self.keys) <= size:
            return
        self.complete = False
        order = self.order()[:size]
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[order])

    def merge(self, other, size):
        self.add(size, **{name: getattr(other, name) for name in self.FIELDS})
        self.shrink(size)
        self.cells += other.cells
        self.mass += other.mass
        self.complete = self.complete and other.complete

    def sorted(self):
        """The candidates as {field: array}, best key first."""
        order = self.order()
        return {name: getattr(self, name)[order] for name in self.FIELDS}


def cell_keys(method, uncertainty, uniform):
    """Keys of cells (largest first taken) for a method."""
    if method == "uncertain":
        # Ties (e.g. uncertainty 1 in a saturated map) broken at random.
        return uncertainty.astype(np.float64) + 1e-9 * uniform
    logs = np.log(np.maximum(uniform, np.finfo(np.float64).tiny))
    if method == "random":
        return logs
    return logs / np.maximum(uncertainty.astype(np.float64), LEAST_WEIGHT)


def row_uniforms(seed, row, cols, out=None):
    """The row's random numbers: a function of the seed and the row alone."""
    return np.random.default_rng([seed, row]).random(cols, out=out)


def scan_rows(classes_rows, uncertainty_rows, first_row, method, seed, size, pools):
    """Add a chunk of rows (classes int32, negative for NULL; uncertainty
    float32, NaN for NULL) to the pools.

    Every cell costs a few array operations over the chunk: its key, its
    class's count and uncertainty sum (bincount), and a comparison with the
    worst key its class's pool keeps; of the cells that beat it, at most
    the chunk's best `size` of a class (np.partition, linear) are gathered
    and added.
    """
    n_rows, n_cols = classes_rows.shape
    uniforms = np.empty((n_rows, n_cols))
    for offset in range(n_rows):
        row_uniforms(seed, first_row + offset, n_cols, out=uniforms[offset])
    valid = (classes_rows >= 0) & np.isfinite(uncertainty_rows)
    if not valid.any():
        return pools
    keys = cell_keys(method, uncertainty_rows, uniforms)
    # Each cell's slot: its class value where small (the usual case), its
    # rank among the chunk's values otherwise; one slot (0) but for balanced.
    if method != "balanced":
        slots = np.where(valid, 0, -1)
        slot_values = np.array([-1])
    elif classes_rows[valid].max() < 2**16:
        slots = np.where(valid, classes_rows, -1)
        slot_values = np.arange(classes_rows[valid].max() + 1)
    else:
        slot_values, ranks = np.unique(classes_rows[valid], return_inverse=True)
        slots = np.full(classes_rows.shape, -1, np.int64)
        slots[valid] = ranks
    valid_slots = slots[valid]
    counts = np.bincount(valid_slots, minlength=len(slot_values))
    # Integer units below 2**24 a cell: their float64 sum over a chunk of at
    # most 2**21 cells is exact.
    units = np.round(uncertainty_rows[valid] * np.float32(MASS_UNIT))
    sums = np.bincount(valid_slots, weights=units, minlength=len(slot_values))
    worst = np.full(len(slot_values), -np.inf)
    for slot in np.flatnonzero(counts):
        pool = pools.setdefault(int(slot_values[slot]), Pool())
        pool.cells += int(counts[slot])
        pool.mass += int(sums[slot])
        if len(pool.keys) >= size:
            worst[slot] = pool.keys.min()
    beat = valid & (keys > worst[np.maximum(slots, 0)])
    rows, cols = np.nonzero(beat)
    picked = slots[rows, cols]
    for slot in np.unique(picked):
        index = np.flatnonzero(picked == slot)
        if len(index) > size:
            # The chunk's best `size`, and any tied with the last of them.
            best = keys[rows[index], cols[index]]
            index = index[best >= np.partition(best, len(best) - size)[-size]]
        r, c = rows[index], cols[index]
        pools[int(slot_values[slot])].add(
            size,
            keys=keys[r, c],
            rows=r.astype(np.int64) + first_row,
            cols=c.astype(np.int64),
            classes=classes_rows[r, c],
            uncertainty=uncertainty_rows[r, c],
        )
    return pools


def chunk_rows(cols):
    """Rows read at a time: about CHUNK_CELLS cells, at least one row."""
    return max(1, CHUNK_CELLS // max(1, cols))


def allocate(npoints, pools):
    """Points per class of `balanced`: half in equal parts, half by uncertainty.

    Largest remainders round the shares to whole points; a class gets at
    most its cells (the rest goes to the others in the same way).
    """
    values = sorted(pools)
    capacity = np.array([pools[v].cells for v in values], dtype=np.float64)
    mass = np.array([pools[v].mass for v in values], dtype=np.float64)
    shares = np.zeros(len(values))
    left = float(npoints)
    open_ = capacity > 0
    while left > 1e-9 and open_.any():
        equal = np.where(open_, 1.0 / open_.sum(), 0.0)
        by_mass = np.where(open_, mass, 0.0)
        by_mass = by_mass / by_mass.sum() if by_mass.sum() > 0 else equal
        wanted = left * (0.5 * equal + 0.5 * by_mass)
        room = capacity - shares
        given = np.minimum(wanted, room)
        shares += given
        left -= given.sum()
        open_ = open_ & (capacity - shares > 1e-9)
    whole = np.floor(shares + 1e-9).astype(int)
    remainder = shares - whole
    for index in np.argsort(-remainder, kind="stable")[: max(0, npoints - whole.sum())]:
        whole[index] += 1
    return dict(zip(values, (int(w) for w in whole)))


class SpacedSet:
    """Points kept at least `distance` apart (a grid of distance-sized bins)."""

    def __init__(self, distance, points=()):
        self.distance = float(distance)
        self.bins = {}
        for x, y in points:
            self.insert(x, y)

    def key(self, x, y):
        return (math.floor(x / self.distance), math.floor(y / self.distance))

    def free(self, x, y):
        if self.distance <= 0:
            return True
        bx, by = self.key(x, y)
        limit = self.distance * self.distance
        for i in (bx - 1, bx, bx + 1):
            for j in (by - 1, by, by + 1):
                for px, py in self.bins.get((i, j), ()):
                    if (px - x) ** 2 + (py - y) ** 2 < limit:
                        return False
        return True

    def insert(self, x, y):
        if self.distance > 0:
            self.bins.setdefault(self.key(x, y), []).append((x, y))


@dataclass
class Proposal:
    """The chosen cells, in the order they were taken, and their centres."""

    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray
    uncertainty: np.ndarray
    x: np.ndarray
    y: np.ndarray


def choose(pools, npoints, method, distance, labelled, cell_centre):
    """Take `npoints` cells from the pools, kept `distance` apart.

    `labelled` are (x, y) of points already labelled; `cell_centre(rows,
    cols)` gives map coordinates. Returns the Proposal, or None when the
    pools (not complete) ran out: the caller scans again with larger ones.
    """
    quotas = allocate(npoints, pools) if method == "balanced" else {-1: npoints}
    spaced = SpacedSet(distance, labelled)
    candidates = {}
    for value, pool in pools.items():
        candidates[value] = pool.sorted()
        candidates[value]["x"], candidates[value]["y"] = cell_centre(
            candidates[value]["rows"], candidates[value]["cols"]
        )
    chosen = []  # (class pool, index)
    used = {value: np.zeros(len(c["keys"]), bool) for value, c in candidates.items()}
    start = dict.fromkeys(candidates, 0)
    taken = dict.fromkeys(candidates, 0)

    def take(value, i):
        c = candidates[value]
        spaced.insert(c["x"][i], c["y"][i])
        used[value][i] = True
        chosen.append((value, i))
        taken[value] += 1

    # Classes take turns by the fraction of their quota filled, so that
    # none is crowded out by the distance kept from another's points.
    active = [value for value in candidates if quotas.get(value, 0) > 0]
    while active and len(chosen) < npoints:
        value = min(active, key=lambda v: (taken[v] / quotas[v], v))
        c = candidates[value]
        i = start[value]
        while i < len(c["keys"]) and not spaced.free(c["x"][i], c["y"][i]):
            i += 1
        start[value] = i + 1
        if i == len(c["keys"]):
            active.remove(value)
            continue
        take(value, i)
        if taken[value] >= quotas[value]:
            active.remove(value)
    # Quotas a class could not fill (too few cells at the distance) go to
    # the best keys left in any class.
    if len(chosen) < npoints:
        left = [(value, np.flatnonzero(~used[value])) for value in candidates]
        values = np.concatenate([np.full(len(i), v) for v, i in left])
        indices = np.concatenate([i for _v, i in left])

        def left_of(name):
            return np.concatenate([candidates[v][name][i] for v, i in left])

        # Best key first; rows and columns break ties, for the same points
        # whatever the order of the pools.
        order = np.lexsort((left_of("cols"), left_of("rows"), -left_of("keys")))
        for value, i in zip(values[order], indices[order]):
            if len(chosen) >= npoints:
                break
            c = candidates[value]
            if spaced.free(c["x"][i], c["y"][i]):
                take(value, i)
    if len(chosen) < npoints:
        if not all(pool.complete for pool in pools.values()):
            return None
        raise IannError(
            _(
                "Only {} points fit at a distance of {} map units from each "
                "other and from the labelled points, not the {} asked; ask "
                "for fewer points or a smaller distance"
            ).format(len(chosen), distance, npoints)
        )

    def gather(name):
        return np.array([candidates[value][name][i] for value, i in chosen])

    return Proposal(
        *(gather(name) for name in ("rows", "cols", "classes", "uncertainty", "x", "y"))
    )
