"""Accuracy of a classified map against a reference map, on the region.

The reference is an integer raster map, or a vector map of points or areas
rasterised on the region's grid (cells under its features). The area
estimates weight the strata by the classes' areas over the whole region,
as GRASS computes them (r.stats -a: square metres, also in latitude-
longitude projects).
"""

import os

import grass.script as gs

from iann.accuracy.metrics import (
    PairCounter,
    accuracy_report,
    format_report,
    plot_confusion,
    write_report,
)
from iann.grass.rasters import (
    RowReader,
    read_categories,
    read_int_rows,
    require_integer_map,
    require_rasters,
)
from iann.grass.reference import rasterise


def check_reference(reference):
    """Full name of an existing integer reference map."""
    (reference,) = require_rasters([reference])
    require_integer_map(reference)
    return reference


def reference_raster(reference, temporary_maps):
    """The raster map to compare with: `reference` itself, or its rasterisation.

    `reference` is the full name of a raster map or a VectorReference;
    a rasterised vector's name goes to `temporary_maps`.
    """
    if isinstance(reference, str):
        return reference
    return rasterise(reference, temporary_maps)


def describe(reference):
    """How messages name the reference."""
    if isinstance(reference, str):
        return _("Reference map <{}>").format(reference)
    return _("Vector map <{}> (column <{}>)").format(reference.name, reference.column)


def classes_of_maps(classified, reference, assigned):
    """Classes (value, label) of a map and its reference, from their categories.

    `reference` is a raster map's name, or None (a vector reference);
    `assigned` are the values the classified map assigns in the region
    (the keys of mapped_areas_of). The classes are the values labelled in
    either map's categories and every assigned value; a value without a
    label is named by its number.
    """
    labels = read_categories(reference) if reference else {}
    labels.update(read_categories(classified))
    for value in assigned:
        labels.setdefault(value, "")
    return [{"value": v, "label": labels[v] or str(v)} for v in sorted(labels)]


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


def mapped_areas_of(classified):
    """Area in square metres of each class value over the region (r.stats -a).

    GRASS computes the areas of cells on the ellipsoid in a latitude-
    longitude project, where nsres x ewres would be square degrees.
    """
    return {
        int(value): float(area)
        for value, area in (
            line.split()
            for line in gs.read_command(
                "r.stats", input=classified, flags="an", quiet=True
            ).splitlines()
        )
    }


def assess(
    classified,
    reference,
    classes,
    report_file=None,
    plot_file=None,
    model=None,
    temporary_maps=None,
    mapped_areas=None,
    decision=None,
):
    """Print the accuracy report; write it as JSON and a plot when asked.

    `reference` is the full name of an integer raster map or a
    VectorReference (see reference_raster); `mapped_areas` are those of
    mapped_areas_of(classified), when the caller has them already;
    `decision` says which decision rule made the map.
    """
    temporary_maps = [] if temporary_maps is None else temporary_maps
    truth = reference_raster(reference, temporary_maps)
    counter = count_pairs(classified, truth)
    report = accuracy_report(
        counter,
        classes,
        mapped_cells=(
            mapped_areas_of(classified) if mapped_areas is None else mapped_areas
        ),
        cell_area=1.0,
    )
    if report is None:
        gs.warning(
            _("{} has no labelled cell where <{}> has data").format(
                describe(reference), classified
            )
        )
        return None
    if report["area_adjusted"]:
        report["area_adjusted"]["area_unit"] = "m2"
    report["map"] = classified
    if isinstance(reference, str):
        report["reference"] = reference
    else:
        report["reference"] = reference.name
        report["reference_vector"] = reference.provenance()
        report["reference_cells"] = _("cells of the region under the vector's features")
    if model:
        report["model"] = os.path.abspath(model)
    if decision:
        report["decision_rule"] = decision
    print(format_report(report))
    if report["unseen_reference_classes"]:
        gs.warning(
            _("{} has classes the model never saw: {}").format(
                describe(reference),
                ", ".join(str(v) for v in report["unseen_reference_classes"]),
            )
        )
    if report_file:
        write_report(report_file, report)
        gs.message(_("Accuracy report written to <{}>").format(report_file))
    if plot_file:
        plot_confusion(plot_file, report)
        gs.message(_("Confusion matrix plot written to <{}>").format(plot_file))
    return report
