"""Accuracy of a classified map against a reference map, on the region."""

import os

import grass.script as gs

from .accuracy import (
    PairCounter,
    accuracy_report,
    format_report,
    plot_confusion,
    write_report,
)
from .grassio import (
    RowReader,
    read_categories,
    read_int_rows,
    require_integer_map,
    require_rasters,
)


def check_reference(reference):
    """Full name of an existing integer reference map."""
    (reference,) = require_rasters([reference])
    require_integer_map(reference)
    return reference


def classes_of_maps(classified, reference):
    """Classes (value, label) of a map and its reference, from their categories."""
    labels = read_categories(classified)
    labels.update(
        {k: v for k, v in read_categories(reference).items() if k not in labels}
    )
    return [{"value": v, "label": labels[v]} for v in sorted(labels)]


def count_pairs(classified, reference, chunk=256):
    """PairCounter of (reference, map) values over the region."""
    counter = PairCounter()
    rows = gs.region()["rows"]
    with RowReader(classified) as mapped, RowReader(reference) as truth:
        for row0 in range(0, rows, chunk):
            row1 = min(rows, row0 + chunk)
            counter.add(
                read_int_rows(truth, row0, row1), read_int_rows(mapped, row0, row1)
            )
    return counter


def mapped_cells_of(classified):
    """Cells of each class value in the map (r.stats)."""
    return {
        int(value): int(count)
        for value, count in (
            line.split()
            for line in gs.read_command(
                "r.stats", input=classified, flags="cn", quiet=True
            ).splitlines()
        )
    }


def assess(
    classified, reference, classes, report_file=None, plot_file=None, model=None
):
    """Print the accuracy report; write it as JSON and a plot when asked."""
    region = gs.region()
    report = accuracy_report(
        count_pairs(classified, reference),
        classes,
        mapped_cells=mapped_cells_of(classified),
        cell_area=region["nsres"] * region["ewres"],
    )
    if report is None:
        gs.warning(
            _("Reference map <{}> has no labelled cell where <{}> has data").format(
                reference, classified
            )
        )
        return None
    report["map"] = classified
    report["reference"] = reference
    if model:
        report["model"] = os.path.abspath(model)
    print(format_report(report))
    if report["unseen_reference_classes"]:
        gs.warning(
            _("Reference map <{}> has classes the model never saw: {}").format(
                reference, ", ".join(str(v) for v in report["unseen_reference_classes"])
            )
        )
    if report_file:
        write_report(report_file, report)
        gs.message(_("Accuracy report written to <{}>").format(report_file))
    if plot_file:
        plot_confusion(plot_file, report)
        gs.message(_("Confusion matrix plot written to <{}>").format(plot_file))
    return report
