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
# % type: string
# % required: no
# % answer: auto
# % key_desc: size
# % label: Rows (and columns) of the blocks a process classifies at a time (8-1000000, or auto)
# % description: auto: 2048 rows, 4096 for GPU workers (-g, or Keras on a GPU of this machine); columns: as many as memory allows, up to the region; rounded to the network's grid and to 8 cells
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
# % options: float32,int8,bfloat16,auto,mixed_bfloat16,mixed_float16
# % label: Numerical precision of the network
# % description: int8, bfloat16 and auto run on OpenVINO or ONNX Runtime, only where the bundle's check passed on this kind of CPU (i.ann.train inference_precision=), else in float32 with a warning
# % descriptions: float32;32-bit floating point, every engine;int8;the bundle's int8 model (model.int8.onnx);bfloat16;OpenVINO in bfloat16, on CPUs with native bfloat16;auto;the fastest reduced precision whose check passed on this kind of CPU, else float32;mixed_bfloat16;Keras in mixed bfloat16 (GPUs);mixed_float16;Keras in mixed float16 (GPUs; float32 on a CPU)
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
# %option G_OPT_V_OUTPUT
# % key: vector
# % required: no
# % description: Name of a vector map of the classes as areas (attributes: value, label)
# % guisection: Output
# %end
# %option
# % key: min_area
# % type: double
# % required: no
# % label: Minimum area in square metres of the vector map's areas
# % description: Smaller areas are merged into the neighbour sharing the longest boundary (v.clean rmarea)
# % guisection: Output
# %end
# %flag
# % key: s
# % description: Smooth the corners of the vector map's areas (r.to.vect -s)
# % guisection: Output
# %end
# %option G_OPT_R_INPUT
# % key: reference
# % required: no
# % description: Integer raster map of reference classes to assess the accuracy against
# % guisection: Accuracy
# %end
# %option G_OPT_V_INPUT
# % key: reference_vector
# % required: no
# % label: Vector map of reference points or areas to assess the accuracy against
# % description: Compared with the classified cells under its features
# % guisection: Accuracy
# %end
# %option G_OPT_V_FIELD
# % guisection: Accuracy
# %end
# %option G_OPT_DB_COLUMN
# % description: Integer column of reference_vector holding the class values
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
# % description: No prediction: assess the map given by classified= against a reference, or write its vector map, or both
# % guisection: Accuracy
# %end
# %flag
# % key: a
# % label: Most probable class: leave out the bundle's decision rule
# % description: Bundles trained with decision= other than argmax add a bias per class before taking the class; -a maps the plain argmax
# % guisection: Output
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
# % exclusive: reference, reference_vector
# % requires: reference_vector, column
# % requires: column, reference_vector
# % requires: report, reference, reference_vector
# % requires: plot, reference, reference_vector
# % requires: -e, classified
# % requires: -e, reference, reference_vector, vector
# % requires: min_area, vector
# % requires: -s, vector
# % requires: classified, -e
# % requires: -g, scheduler
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


def stop(signum, frame):
    # SIGTERM ends the run as Ctrl-C does: temporary maps removed, finished
    # blocks kept for a rerun, existing outputs untouched.
    raise KeyboardInterrupt


def main(options, flags):
    from iann.errors import IannError
    from iann.grass.temporary import remove_dead_runs_maps

    signal.signal(signal.SIGTERM, stop)
    try:
        remove_dead_runs_maps()
        if flags["e"]:
            return assess_only(options, flags)
        return classify(options, flags)
    except IannError as error:
        gs.fatal(str(error))
    except KeyboardInterrupt:
        gs.fatal(_("Interrupted"))


def assess_only(options, flags):
    """The accuracy report of an existing map (-e), its vector map, or both."""
    from iann.accuracy.assessment import assess, classes_of_maps, mapped_areas_of
    from iann.grass.rasters import require_rasters
    from iann.grass.vectorise import check_new_vector

    (classified,) = require_rasters([options["classified"]])
    reference = reference_option(options)
    check_report_files(options)
    check_new_vector(options["vector"], gs.overwrite())
    if reference is not None:
        truth = reference if isinstance(reference, str) else None
        # One r.stats pass: the values the map assigns and their areas.
        mapped = mapped_areas_of(classified)
        assess(
            classified,
            reference,
            classes_of_maps(classified, truth, mapped),
            options["report"],
            options["plot"],
            temporary_maps=TEMPORARY_MAPS,
            mapped_areas=mapped,
        )
    vector_output(classified, options, flags)
    return 0


def reference_option(options):
    """The checked reference: a raster's full name or a VectorReference."""
    from iann.accuracy.assessment import check_reference
    from iann.grass.reference import check_vector_reference

    if options["reference_vector"]:
        return check_vector_reference(
            options["reference_vector"], options["column"], layer=options["layer"]
        )
    if options["reference"]:
        return check_reference(options["reference"])
    return None


def vector_output(classified, options, flags):
    """Write the vector map of the classes when asked."""
    from iann.grass.vectorise import write_vector

    if not options["vector"]:
        return
    write_vector(
        classified,
        options["vector"],
        float(options["min_area"]) if options["min_area"] else 0.0,
        flags["s"],
        TEMPORARY_VECTORS,
    )
    gs.message(_("Vector map of the classes written to <{}>").format(options["vector"]))


def classify(options, flags):
    from iann.accuracy.assessment import assess
    from iann.grass.rasters import group_members
    from iann.grass.vectorise import check_new_vector
    from iann.jobs.classify import ClassifyRequest
    from iann.jobs.classify import classify as run_job

    if options["input"]:
        bands = options["input"].split(",")
    else:
        bands = group_members(options["group"])
    reference = reference_option(options)
    check_report_files(options)
    check_new_vector(options["vector"], gs.overwrite())
    if options["min_area"] and float(options["min_area"]) < 0:
        gs.fatal(_("min_area must not be negative"))
    block_rows, block_cols = block_size_option(options, flags)
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
        block_size=block_rows,
        block_cols=block_cols,
        memory_mb=int(options["memory"]),
        batch=int(options["batch"]),
        nprocs=int(options["nprocs"]),
        scheduler=options["scheduler"] or None,
        gpu=flags["g"],
        argmax=flags["a"],
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
        from iann.formats.bundle import read_bundle_metadata
        from iann.jobs.classify import decision_text

        metadata = read_bundle_metadata(options["model"])
        assess(
            outputs.classes,
            reference,
            metadata.classes,
            options["report"],
            options["plot"],
            options["model"],
            TEMPORARY_MAPS,
            decision=decision_text(metadata, request),
        )
    vector_output(outputs.classes, options, flags)
    return 0


def block_size_option(options, flags):
    """block_size as (rows, columns or None: as many as memory allows).

    auto: larger blocks for GPU workers. A GPU classifies a block of 2048
    rows in a fraction of a second: with blocks of 4096 there are half as
    many blocks for Dask to schedule, and more rows of tiles in a block for
    reading and writing to overlap with the network (see the manual).
    """
    value = options["block_size"]
    if value == "auto":
        from iann.nn.devices import gpu_present

        on_gpu = flags["g"] or (
            options["engine"] in ("auto", "keras") and gpu_present()
        )
        return (4096 if on_gpu else 2048), None
    sizes = []
    for part in value.split(","):
        try:
            sizes.append(int(part))
        except ValueError:
            sizes.append(0)
    if len(sizes) > 2 or not all(8 <= size <= 1000000 for size in sizes):
        gs.fatal(
            _(
                "block_size must be auto, or rows or rows,columns from 8 to "
                "1000000 cells, not <{}>"
            ).format(value)
        )
    return sizes[0], (sizes[1] if len(sizes) == 2 else None)


def check_report_files(options):
    """Refuse to overwrite a report or plot file without --overwrite."""
    from iann.formats.folders import check_new_file

    if options["report"]:
        check_new_file(options["report"], gs.overwrite(), _("Report file"))
    if options["plot"]:
        check_new_file(options["plot"], gs.overwrite(), _("Plot file"))


def cleanup():
    # A second Ctrl-C must not cut the clean-up short (with a traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if TEMPORARY_MAPS or TEMPORARY_VECTORS:  # the library is imported then
        from iann.grass.rasters import remove_maps

        remove_maps(TEMPORARY_VECTORS, "vector")
        remove_maps(TEMPORARY_MAPS)


TEMPORARY_MAPS = []
TEMPORARY_VECTORS = []

if __name__ == "__main__":
    options, flags = gs.parser()
    atexit.register(cleanup)
    sys.exit(main(options, flags))
