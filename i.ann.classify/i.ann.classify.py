#!/usr/bin/env python3

############################################################################
#
# MODULE:       i.ann.classify
# AUTHOR(S):    i.ann developers
# PURPOSE:      Classifies the current region with a model bundle, tile by
#               tile, and reports accuracy against a reference map
# COPYRIGHT:    (C) 2026 by the i.ann developers
#
#               This program is free software under the GNU General Public
#               License (>=v2). Read the file COPYING that comes with GRASS
#               for details.
#
############################################################################

# %module
# % description: Classifies imagery with a network from i.ann.train; reports accuracy.
# % keyword: imagery
# % keyword: classification
# % keyword: deep learning
# % keyword: land cover
# %end
# %option G_OPT_R_INPUTS
# % description: Name of the image bands, in the order the model was trained with
# % guisection: Input
# %end
# %option G_OPT_M_DIR
# % key: model
# % description: Model bundle folder written by i.ann.train
# % guisection: Input
# %end
# %option G_OPT_R_OUTPUT
# % description: Name of the classified raster map
# % guisection: Output
# %end
# %option
# % key: tile_size
# % type: integer
# % required: no
# % answer: 256
# % options: 16-8192
# % description: Size in cells of the tiles predicted at once (without their margin)
# % guisection: Output
# %end
# %option G_OPT_R_INPUT
# % key: reference
# % required: no
# % description: Integer map of reference classes to assess the accuracy against
# % guisection: Accuracy
# %end
# %option G_OPT_F_OUTPUT
# % key: report
# % required: no
# % description: JSON file for the accuracy report
# % guisection: Accuracy
# %end
# %rules
# % requires: report, reference
# %end

import atexit
import os
import sys

import grass.script as gs


def import_library():
    """Put the i.ann library on sys.path, from the source tree or the install."""
    here = os.path.dirname(os.path.realpath(__file__))
    source = os.path.join(os.path.dirname(here), "lib")
    if os.path.isdir(os.path.join(source, "iann")):
        sys.path.insert(0, source)
    else:
        from grass.script.utils import get_lib_path

        path = get_lib_path(modname="i.ann", libname="iann")
        if path is None:
            gs.fatal(_("The i.ann library is not installed"))
        sys.path.insert(0, path)


def main(options, flags):
    import_library()
    from iann.bundle import read_bundle_metadata
    from iann.errors import IannError
    from iann.grassio import raster_info, require_rasters

    output = options["output"]
    bands = options["input"].split(",")
    reference = options["reference"] or None
    try:
        metadata = read_bundle_metadata(options["model"])
        bands = require_rasters(bands)
        if len(bands) != len(metadata["bands"]):
            raise IannError(
                _("Model <{}> was trained on {} bands ({}), {} were given").format(
                    options["model"],
                    len(metadata["bands"]),
                    ",".join(b["name"] for b in metadata["bands"]),
                    len(bands),
                )
            )
        if reference:
            (reference,) = require_rasters([reference])
            if raster_info(reference)["datatype"] != "CELL":
                raise IannError(
                    _("Reference map <{}> is not an integer map").format(reference)
                )
    except IannError as error:
        gs.fatal(str(error))
    if (
        gs.find_file(output, element="cell", mapset=".")["fullname"]
        and not gs.overwrite()
    ):
        gs.fatal(
            _("Raster map <{}> exists; use --overwrite to replace it").format(output)
        )

    from iann.accuracy import accuracy_report, format_report, write_report
    from iann.bundle import load_bundle
    from iann.prediction import classify_region, write_class_metadata

    try:
        metadata, model = load_bundle(options["model"])
    except IannError as error:
        gs.fatal(str(error))
    temporary = gs.append_node_pid("tmp_iann_classify")
    TEMPORARY_MAPS.append(temporary)
    gs.message(
        _("Classifying {} x {} cells in tiles of {} cells (margin {})").format(
            gs.region()["rows"],
            gs.region()["cols"],
            options["tile_size"],
            metadata["margin"],
        )
    )
    counter, cells = classify_region(
        model,
        metadata,
        bands,
        temporary,
        tile_size=int(options["tile_size"]),
        reference=reference,
    )
    if cells == 0:
        gs.fatal(
            _("No cell of the region has data in all bands <{}>").format(
                ",".join(bands)
            )
        )
    write_class_metadata(
        temporary,
        metadata,
        title="Land cover classified by i.ann ({})".format(metadata["architecture"]),
        history="i.ann.classify model={} input={}".format(
            os.path.abspath(options["model"]), ",".join(bands)
        ),
    )
    gs.run_command(
        "g.rename", raster=(temporary, output), overwrite=gs.overwrite(), quiet=True
    )
    TEMPORARY_MAPS.remove(temporary)
    gs.raster_history(output, overwrite=True)
    gs.message(_("Classified map written to <{}>").format(output))

    if counter is not None:
        report = accuracy_report(counter, metadata["classes"])
        if report is None:
            gs.warning(
                _(
                    "Reference map <{}> has no labelled cell where the map has data"
                ).format(reference)
            )
            return 0
        report["map"] = output
        report["reference"] = reference
        report["model"] = os.path.abspath(options["model"])
        print(format_report(report))
        if report["unseen_reference_classes"]:
            gs.warning(
                _("Reference map <{}> has classes the model never saw: {}").format(
                    reference,
                    ", ".join(str(v) for v in report["unseen_reference_classes"]),
                )
            )
        if options["report"]:
            write_report(options["report"], report)
            gs.message(_("Accuracy report written to <{}>").format(options["report"]))
    return 0


def cleanup():
    for name in TEMPORARY_MAPS:
        gs.run_command(
            "g.remove", type="raster", name=name, flags="f", quiet=True, errors="ignore"
        )


TEMPORARY_MAPS = []

if __name__ == "__main__":
    options, flags = gs.parser()
    atexit.register(cleanup)
    sys.exit(main(options, flags))
