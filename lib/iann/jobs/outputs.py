"""The maps i.ann.classify writes, finished once whatever computed them.

Outputs are first written under temporary names; categories, colours,
titles and history are set on those, and only then are they renamed to
the names the user asked for: an interrupted run never leaves a
half-written map under the output's name, nor touches an existing one.
"""

from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

import grass.script as gs

from iann.grass import CELL_NULL
from iann.grass.rasters import RowReader, RowWriter, read_int_rows, read_rows
from iann.predict.decision import decide


@dataclass
class OutputMaps:
    """Names of a classification's maps (probabilities: one per class)."""

    classes: str
    probabilities: list = field(default_factory=list)
    uncertainty: str = None

    def names(self):
        return [self.classes] + self.probabilities + [self.uncertainty]

    @classmethod
    def requested(cls, output, probabilities_base, uncertainty, values):
        probabilities = []
        if probabilities_base:
            probabilities = ["{}_{}".format(probabilities_base, v) for v in values]
        return cls(output, probabilities, uncertainty or None)

    def temporary(self, base):
        """Temporary names in the current mapset for the same maps."""
        return OutputMaps(
            base,
            ["{}_p{}".format(base, i) for i in range(len(self.probabilities))],
            base + "_u" if self.uncertainty else None,
        )


def write_class_metadata(output, metadata, title, history, description=None):
    """Categories, colours, title, history and description of a classified map."""
    categories = "\n".join(
        "{}|{}".format(c["value"], c["label"]) for c in metadata.classes
    )
    gs.write_command(
        "r.category",
        map=output,
        rules="-",
        separator="pipe",
        stdin=categories,
        quiet=True,
    )
    colors = [c for c in metadata.classes if c.get("color")]
    if colors:
        rules = "\n".join("{} {}".format(c["value"], c["color"]) for c in colors)
        gs.write_command("r.colors", map=output, rules="-", stdin=rules, quiet=True)
    gs.run_command(
        "r.support",
        map=output,
        title=title,
        history=history,
        description=description,
        quiet=True,
    )


def finish(temporary, final, metadata, history, uncertainty_method, description=None):
    """Metadata on the temporary maps, then rename them to the final names.

    `description` goes to the class map's (r.info's "Data Description").
    """
    write_class_metadata(
        temporary.classes,
        metadata,
        title="Land cover classified by i.ann ({})".format(metadata.architecture),
        history=history,
        description=description,
    )
    for name, c in zip(temporary.probabilities, metadata.classes):
        gs.run_command(
            "r.support",
            map=name,
            title="Probability of class {} ({})".format(c["value"], c["label"]),
            history=history,
            quiet=True,
        )
        gs.run_command("r.colors", map=name, color="viridis", quiet=True)
    if temporary.uncertainty:
        gs.run_command(
            "r.support",
            map=temporary.uncertainty,
            title="Uncertainty ({}) of the i.ann classification".format(
                uncertainty_method
            ),
            history=history,
            quiet=True,
        )
        gs.run_command("r.colors", map=temporary.uncertainty, color="magma", quiet=True)
    pairs = [
        (old, new) for old, new in zip(temporary.names(), final.names()) if old and new
    ]
    # Everything that writes is done before the first rename, so that a
    # failure (a full disk) leaves no output under its final name.
    for old, _new in pairs:
        gs.raster_history(old, overwrite=True)
    for old, new in pairs:
        gs.run_command("g.rename", raster=(old, new), overwrite=True, quiet=True)
    return [old for old, _new in pairs]


def add_segment_sums(sums, segment_ids, probabilities):
    """Add each segment's summed class probabilities."""
    keep = (segment_ids != CELL_NULL) & ~np.isnan(probabilities[..., 0])
    if not keep.any():
        return
    unique, inverse = np.unique(segment_ids[keep], return_inverse=True)
    totals = np.zeros((len(unique), probabilities.shape[-1]), dtype=np.float64)
    np.add.at(totals, inverse, probabilities[keep])
    for segment, total in zip(unique.tolist(), totals):
        if segment in sums:
            sums[segment] += total
        else:
            sums[segment] = total


def segment_sums(probability_maps, segments, rows, chunk=256):
    """Summed class probabilities of every segment over the whole region."""
    sums = {}
    with ExitStack() as stack:
        readers = [stack.enter_context(RowReader(n)) for n in probability_maps]
        segment_reader = stack.enter_context(RowReader(segments))
        for row0 in range(0, rows, chunk):
            row1 = min(rows, row0 + chunk)
            probabilities = np.moveaxis(read_rows(readers, row0, row1), 0, -1)
            ids = read_int_rows(segment_reader, row0, row1)
            add_segment_sums(sums, ids, probabilities)
    return sums


def write_segment_classes(output, segments, sums, values, rows, class_scale=None):
    """Object-based map: each segment gets its class of highest mean probability
    (times `class_scale`, the decision rule's factors, where given).

    Cells outside segments, or of segments without data, are NULL.
    """
    ids = np.array(sorted(sums), dtype=np.int64)
    best = np.array([values[decide(sums[i], class_scale)] for i in ids], np.int32)
    with RowReader(segments) as reader, RowWriter(output, "CELL") as writer:
        for row in range(rows):
            line = read_int_rows(reader, row, row + 1)[0]
            if len(ids) == 0:
                writer.write(np.full(line.shape, CELL_NULL, np.int32))
                continue
            position = np.clip(np.searchsorted(ids, line), 0, len(ids) - 1)
            found = (line != CELL_NULL) & (ids[position] == line)
            writer.write(np.where(found, best[position], CELL_NULL))
