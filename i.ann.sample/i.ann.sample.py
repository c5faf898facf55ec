#!/usr/bin/env python3

############################################################################
#
# MODULE:       i.ann.sample
# AUTHOR(S):    i.ann developers
# PURPOSE:      Proposes points to label where a classification is
#               uncertain, spread over its classes and apart from each other
#               and from the points already labelled (active learning)
# COPYRIGHT:    (C) 2026 by the i.ann developers
#
#               This program is free software under the GNU General Public
#               License (>=v2). Read the file COPYING that comes with GRASS
#               for details.
#
############################################################################

# %module
# % description: Proposes points to label next where a classification of i.ann.classify is uncertain.
# % keyword: imagery
# % keyword: classification
# % keyword: deep learning
# % keyword: sampling
# % keyword: active learning
# %end
# %option G_OPT_R_INPUT
# % key: classified
# % description: Class map of i.ann.classify
# % guisection: Input
# %end
# %option G_OPT_R_INPUT
# % key: uncertainty
# % description: Uncertainty map of the same i.ann.classify run (0: certain, 1: uncertain)
# % guisection: Input
# %end
# %option G_OPT_V_INPUTS
# % key: training
# % required: no
# % label: Vector maps of the points already labelled
# % description: No point is proposed closer than the distance to their points (and area centroids)
# % guisection: Input
# %end
# %option
# % key: npoints
# % type: integer
# % required: yes
# % options: 1-1000000
# % description: Number of points to propose
# % guisection: Sampling
# %end
# %option
# % key: distance
# % type: double
# % required: no
# % label: Minimum distance between the points, and from the labelled points, in map units
# % description: Default: 3 cells of the region
# % guisection: Sampling
# %end
# %option
# % key: method
# % type: string
# % required: no
# % answer: balanced
# % options: balanced,uncertain,random
# % description: How the points are chosen
# % descriptions: balanced;drawn with probability proportional to the uncertainty, shared among the predicted classes (half in equal parts, half by their uncertainty);uncertain;the most uncertain cells;random;uniformly, without the maps' values (a baseline)
# % guisection: Sampling
# %end
# %option
# % key: seed
# % type: integer
# % required: no
# % answer: 1
# % description: Seed of the random number generator (same seed, same points)
# % guisection: Sampling
# %end
# %option G_OPT_M_NPROCS
# % description: Number of processes reading the maps (parts of the region's rows)
# % guisection: Sampling
# %end
# %option G_OPT_V_OUTPUT
# % description: Name of the vector map of points to label
# % guisection: Output
# %end
# %option G_OPT_DB_COLUMN
# % answer: class
# % description: Integer column to label (left empty), as i.ann.patches training= column= reads it
# % guisection: Output
# %end
# %option G_OPT_DB_COLUMN
# % key: label_column
# % description: Text column for the class names (left empty), as i.ann.patches label_column= reads it
# % guisection: Output
# %end

import atexit
import os
import signal
import sys

import grass.script as gs

# The library: lib/ of the source tree, or etc/i.ann of the installed addon,
# found from this script's own folder because grass-session moves
# GRASS_ADDON_BASE (gs.utils.set_path would look there, or in the cwd).
sys.path[:0] = [
    os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", folder)
    for folder in ("lib", os.path.join("etc", "i.ann"))
]


def main(options, flags):
    from iann.errors import IannError
    from iann.grass.rasters import require_rasters
    from iann.grass.reference import find_vector
    from iann.grass.temporary import remove_dead_runs_maps
    from iann.grass.vectorise import check_new_vector
    from iann.labelling.batch import propose_points, reserved_columns, write_batch

    output = options["output"]
    column = options["column"]
    label_column = options["label_column"]
    taken = {name.lower() for name in reserved_columns()}
    for name in (column, label_column):
        if name and name.lower() in taken:
            gs.fatal(
                _("Column <{}> is written by i.ann.sample itself; name another").format(
                    name
                )
            )
    if label_column and label_column.lower() == column.lower():
        gs.fatal(_("column and label_column must differ"))
    region = gs.region()
    distance = (
        float(options["distance"])
        if options["distance"]
        else 3 * max(region["nsres"], region["ewres"])
    )
    if distance < 0:
        gs.fatal(_("distance must not be negative"))
    try:
        remove_dead_runs_maps()
        check_new_vector(output, gs.overwrite())
        classified, uncertainty = options["classified"], options["uncertainty"]
        require_rasters([classified, uncertainty])
        labelled = [
            find_vector(name) for name in options["training"].split(",") if name
        ]
        proposal, labels = propose_points(
            classified,
            uncertainty,
            labelled,
            npoints=int(options["npoints"]),
            distance=distance,
            method=options["method"],
            seed=int(options["seed"]),
            nprocs=int(options["nprocs"]),
        )
        write_batch(output, proposal, labels, column, label_column, TEMPORARY_VECTORS)
    except IannError as error:
        gs.fatal(str(error))
    except KeyboardInterrupt:
        gs.fatal(_("Interrupted; nothing was written"))
    gs.message(
        _(
            "{} points to label written to <{}> (column <{}> to fill; "
            "predicted class and uncertainty beside it)"
        ).format(len(proposal.rows), output, column)
    )
    return 0


def cleanup():
    # A second Ctrl-C must not cut the clean-up short (with a traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if TEMPORARY_VECTORS:  # the library is imported then
        from iann.grass.rasters import remove_maps

        remove_maps(TEMPORARY_VECTORS, "vector")


TEMPORARY_VECTORS = []

if __name__ == "__main__":
    options, flags = gs.parser()
    atexit.register(cleanup)
    sys.exit(main(options, flags))
