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
# % required: no
# % description: Name of the image bands, in the order the model was trained with
# % guisection: Input
# %end
# %option G_OPT_I_GROUP
# % required: no
# % description: Imagery group of the bands (members in i.group -g order)
# % guisection: Input
# %end
# %option G_OPT_M_DIR
# % key: model
# % required: no
# % description: Model bundle folder written by i.ann.train
# % guisection: Input
# %end
# %option
# % key: normalize
# % type: string
# % required: no
# % answer: model
# % options: model,image
# % description: Band statistics used to standardise the input
# % descriptions: model;those of the training data (same imagery);image;recomputed on the input (other sensor or bit depth)
# % guisection: Input
# %end
# %option G_OPT_R_OUTPUT
# % required: no
# % description: Name of the classified raster map
# % guisection: Output
# %end
# %option
# % key: probabilities
# % type: string
# % required: no
# % description: Basename of the probability maps, one FCELL map per class (basename_<value>)
# % guisection: Output
# %end
# %option G_OPT_R_OUTPUT
# % key: uncertainty
# % required: no
# % description: Name of the uncertainty map (0: certain, 1: uncertain)
# % guisection: Output
# %end
# %option
# % key: uncertainty_method
# % type: string
# % required: no
# % answer: entropy
# % options: entropy,margin
# % description: Measure of uncertainty
# % descriptions: entropy;entropy of the class probabilities over its maximum;margin;1 minus the margin between the two most probable classes
# % guisection: Output
# %end
# %option G_OPT_R_INPUT
# % key: segments
# % required: no
# % description: Segment map (e.g. from i.segment): each segment gets the class of highest mean probability
# % guisection: Output
# %end
# %option
# % key: tile_size
# % type: integer
# % required: no
# % answer: 1024
# % options: 16-8192
# % description: Size in cells of the tiles predicted at once (without their margin)
# % guisection: Processing
# %end
# %option
# % key: block_size
# % type: integer
# % required: no
# % answer: 2048
# % options: 16-1000000
# % label: Size in cells of the blocks a process classifies at a time
# % description: The unit of parallel work and of resume; rounded to the network's pooling grid
# % guisection: Processing
# %end
# %option G_OPT_M_NPROCS
# % description: Number of processes on this machine, each classifying blocks (a Dask LocalCluster)
# % guisection: Processing
# %end
# %option
# % key: scheduler
# % type: string
# % required: no
# % key_desc: address
# % label: Address of a Dask scheduler to send the blocks to (e.g. tcp://host:8786)
# % description: Its workers must see this GRASS database and the model bundle at the same paths
# % guisection: Processing
# %end
# %option
# % key: engine
# % type: string
# % required: no
# % answer: auto
# % options: auto,keras,onnx,openvino
# % label: Engine that runs the network
# % descriptions: auto;OpenVINO or ONNX Runtime on a CPU when the bundle has a valid model.onnx, else Keras;keras;the Keras model (GPU when the backend sees one);onnx;model.onnx in ONNX Runtime;openvino;model.onnx in OpenVINO
# % guisection: Processing
# %end
# %option
# % key: precision
# % type: string
# % required: no
# % answer: float32
# % options: float32,mixed_bfloat16,mixed_float16
# % label: Numerical precision of the network (Keras engine)
# % description: Mixed precisions compute in 16 bits, mainly for GPUs; mixed_float16 on a CPU falls back to float32
# % guisection: Processing
# %end
# %option
# % key: batch
# % type: integer
# % required: no
# % answer: 1
# % options: 1-256
# % description: Tiles given to the network at once (more on a GPU)
# % guisection: Processing
# %end
# %option G_OPT_MEMORYMB
# % answer: 1024
# % description: Memory in MB for the tile buffers of a process (the tile size is reduced to fit)
# % guisection: Processing
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
# %option G_OPT_F_OUTPUT
# % key: plot
# % required: no
# % description: PNG file of the normalised confusion matrix
# % guisection: Accuracy
# %end
# %option G_OPT_R_INPUT
# % key: classified
# % required: no
# % description: Existing classified map to assess with -e (no prediction)
# % guisection: Accuracy
# %end
# %flag
# % key: t
# % description: Test-time augmentation: average the 8 flips and rotations of each tile
# % guisection: Output
# %end
# %flag
# % key: n
# % description: Recompute the band statistics on the input (same as normalize=image)
# % guisection: Input
# %end
# %flag
# % key: e
# % description: Only assess the map given by classified= against reference= (no prediction)
# % guisection: Accuracy
# %end
# %flag
# % key: g
# % description: Each block asks the Dask workers for one GPU (workers started with --resources GPU=1)
# % guisection: Processing
# %end
# %rules
# % required: output, -e
# % exclusive: input, group
# % requires: output, input, group
# % requires: output, model
# % requires: report, reference
# % requires: plot, reference
# % requires: -e, classified
# % requires: -e, reference
# % requires: classified, -e
# % requires: -g, scheduler
# %end

import atexit
import os
import signal
import sys

import grass.script as gs


def import_library():
    """Put the i.ann library on sys.path, from the source tree or the install."""
    here = os.path.dirname(os.path.realpath(__file__))
    source = os.path.join(os.path.dirname(here), "lib")
    # Installed: <addon base>/scripts/<module> beside <addon base>/etc/i.ann,
    # found even when GRASS_ADDON_BASE points elsewhere (grass-session).
    installed = os.path.join(os.path.dirname(here), "etc", "i.ann")
    if os.path.isdir(os.path.join(source, "iann")):
        sys.path.insert(0, source)
    elif os.path.isdir(os.path.join(installed, "iann")):
        sys.path.insert(0, installed)
    else:
        from grass.script.utils import get_lib_path

        path = get_lib_path(modname="i.ann", libname="iann")
        if path is None:
            gs.fatal(_("The i.ann library is not installed"))
        sys.path.insert(0, path)


def stop(signum, frame):
    # SIGTERM ends the run as Ctrl-C does: temporary maps removed, finished
    # blocks kept for a rerun, existing outputs untouched.
    raise KeyboardInterrupt


def main(options, flags):
    import_library()
    from iann.errors import IannError

    signal.signal(signal.SIGTERM, stop)
    try:
        if flags["e"]:
            return assess_only(options)
        return classify(options, flags)
    except IannError as error:
        gs.fatal(str(error))
    except KeyboardInterrupt:
        gs.fatal(_("Interrupted"))


def assess_only(options):
    """The accuracy report of an existing map (-e)."""
    from iann.assessment import assess, check_reference, classes_of_maps
    from iann.grassio import require_rasters

    (classified,) = require_rasters([options["classified"]])
    reference = check_reference(options["reference"])
    check_report_files(options)
    classes = classes_of_maps(classified, reference)
    assess(classified, reference, classes, options["report"], options["plot"])
    return 0


def classify(options, flags):
    from iann.assessment import assess, check_reference
    from iann.grassio import group_members
    from iann.jobs import ClassifyRequest
    from iann.jobs import classify as run_job

    if options["input"]:
        bands = options["input"].split(",")
    else:
        bands = group_members(options["group"])
    reference = options["reference"] or None
    if reference:
        reference = check_reference(reference)
    check_report_files(options)
    request = ClassifyRequest(
        bands=bands,
        bundle=options["model"],
        output=options["output"],
        probabilities=options["probabilities"] or None,
        uncertainty=options["uncertainty"] or None,
        uncertainty_method=options["uncertainty_method"],
        segments=options["segments"] or None,
        normalize_image=flags["n"] or options["normalize"] == "image",
        augment=flags["t"],
        engine=options["engine"],
        precision=options["precision"],
        tile_size=int(options["tile_size"]),
        block_size=int(options["block_size"]),
        memory_mb=int(options["memory"]),
        batch=int(options["batch"]),
        nprocs=int(options["nprocs"]),
        scheduler=options["scheduler"] or None,
        gpu=flags["g"],
        overwrite=gs.overwrite(),
    )
    result = run_job(request, TEMPORARY_MAPS)
    outputs = result.outputs
    gs.message(_("Classified map written to <{}>").format(outputs.classes))
    if outputs.probabilities:
        gs.message(
            _("Probability maps written to <{}>").format(
                ",".join(outputs.probabilities)
            )
        )
    if outputs.uncertainty:
        gs.message(_("Uncertainty map written to <{}>").format(outputs.uncertainty))
    if reference:
        from iann.bundle import read_bundle_metadata

        classes = read_bundle_metadata(options["model"])["classes"]
        assess(
            outputs.classes,
            reference,
            classes,
            options["report"],
            options["plot"],
            options["model"],
        )
    return 0


def check_report_files(options):
    """Refuse to overwrite a report or plot file without --overwrite."""
    from iann.folders import check_new_file

    if options["report"]:
        check_new_file(options["report"], gs.overwrite(), _("Report file"))
    if options["plot"]:
        check_new_file(options["plot"], gs.overwrite(), _("Plot file"))


def cleanup():
    for name in TEMPORARY_MAPS:
        if name:
            gs.run_command(
                "g.remove",
                type="raster",
                name=name,
                flags="f",
                quiet=True,
                errors="ignore",
            )


TEMPORARY_MAPS = []

if __name__ == "__main__":
    options, flags = gs.parser()
    atexit.register(cleanup)
    sys.exit(main(options, flags))
