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
# % guisection: Tiling
# %end
# %option G_OPT_M_NPROCS
# % description: Number of processes, each classifying a strip of the region
# % guisection: Tiling
# %end
# %option G_OPT_MEMORYMB
# % answer: 1024
# % description: Memory in MB for the tile buffers (the tile size is reduced to fit)
# % guisection: Tiling
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
# %rules
# % required: output, -e
# % exclusive: input, group
# % requires: report, reference
# % requires: plot, reference
# % requires: -e, classified
# % requires: -e, reference
# % requires: classified, -e
# %end

import atexit
import os
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


def main(options, flags):
    import_library()
    from iann.errors import IannError

    try:
        if flags["e"]:
            return assess_only(options)
        return classify(options, flags)
    except IannError as error:
        gs.fatal(str(error))


def check_reference(reference):
    from iann.grassio import require_integer_map, require_rasters

    (reference,) = require_rasters([reference])
    require_integer_map(reference)
    return reference


def assess_only(options):
    """The accuracy report of an existing map (-e)."""
    from iann.grassio import read_categories, require_rasters

    (classified,) = require_rasters([options["classified"]])
    reference = check_reference(options["reference"])
    check_report_files(options)
    labels = read_categories(classified)
    labels.update(
        {k: v for k, v in read_categories(reference).items() if k not in labels}
    )
    classes = [{"value": v, "label": labels[v]} for v in sorted(labels)]
    report_accuracy(options, classified, reference, classes, counter=None)
    return 0


def classify(options, flags):
    from iann.bundle import load_bundle, read_bundle_metadata
    from iann.dataset import resampled_bands
    from iann.errors import IannError
    from iann.grassio import check_new_raster, group_members, require_rasters
    from iann.prediction import (
        classify_region,
        image_statistics,
        write_class_metadata,
        write_segment_classes,
    )

    output = options["output"]
    if not output:
        raise IannError(_("Option <output> is required (or -e to assess a map)"))
    if not options["model"]:
        raise IannError(_("Option <model> is required"))
    if not (options["input"] or options["group"]):
        raise IannError(_("Option <input> or <group> is required"))
    if options["input"]:
        bands = options["input"].split(",")
    else:
        bands = group_members(options["group"])
    reference = options["reference"] or None
    segments = options["segments"] or None
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
        reference = check_reference(reference)
    if segments:
        (segments,) = require_rasters([segments])
    values = [c["value"] for c in metadata["classes"]]
    probability_maps = (
        ["{}_{}".format(options["probabilities"], v) for v in values]
        if options["probabilities"]
        else []
    )
    for name in [output, options["uncertainty"]] + probability_maps:
        check_new_raster(name, gs.overwrite())
    check_report_files(options)

    nprocs = int(options["nprocs"])
    if nprocs > 1 and segments:
        raise IannError(_("segments= needs nprocs=1 (segments may span strips)"))
    metadata, model = load_bundle(options["model"])
    normalisation = None
    if flags["n"] or options["normalize"] == "image":
        normalisation = image_statistics(bands)
        gs.verbose(_("Band statistics recomputed on the input"))
    method = (
        metadata.get("dataset", {}).get("sampling", {}).get("resample") or "bilinear"
    )
    readable, _records = resampled_bands(bands, method, TEMPORARY_MAPS)
    if nprocs > 1:
        del model
        return classify_in_strips(
            options, flags, metadata, bands, readable, normalisation, nprocs
        )

    temporary = gs.append_node_pid("tmp_iann_classify")
    pixel_map = temporary + "_pixels" if segments else temporary
    temporary_probabilities = [temporary + "_p{}".format(v) for v in values]
    temporary_probabilities = temporary_probabilities if probability_maps else []
    temporary_uncertainty = temporary + "_u" if options["uncertainty"] else None
    TEMPORARY_MAPS.extend(
        [temporary, temporary_uncertainty]
        + temporary_probabilities
        + ([pixel_map] if segments else [])
    )
    region = gs.region()
    gs.message(
        _("Classifying {} x {} cells with <{}> (margin {} cells)").format(
            region["rows"], region["cols"], options["model"], metadata["margin"]
        )
    )
    result = classify_region(
        model,
        metadata,
        readable,
        pixel_map,
        tile_size=int(options["tile_size"]),
        reference=None if segments else reference,
        probabilities=temporary_probabilities,
        uncertainty=temporary_uncertainty,
        uncertainty_method=options["uncertainty_method"],
        augment=flags["t"],
        normalisation=normalisation,
        memory_mb=int(options["memory"]),
        segments=segments,
    )
    if result["cells"] == 0:
        raise IannError(
            _("No cell of the region has data in all bands <{}>").format(
                ",".join(bands)
            )
        )
    gs.verbose(_("Tiles of {} cells").format(result["tile_size"]))
    counter = result["counter"]
    if segments:
        counter = write_segment_classes(
            temporary, segments, result["segment_sums"], values, reference
        )
    history = "i.ann.classify model={} input={}{}".format(
        os.path.abspath(options["model"]),
        ",".join(bands),
        " segments={}".format(segments) if segments else "",
    )
    write_class_metadata(
        temporary,
        metadata,
        title="Land cover classified by i.ann ({})".format(metadata["architecture"]),
        history=history,
    )
    renames = [(temporary, output)]
    for temp, name, c in zip(
        temporary_probabilities, probability_maps, metadata["classes"]
    ):
        gs.run_command(
            "r.support",
            map=temp,
            title="Probability of class {} ({})".format(c["value"], c["label"]),
            history=history,
        )
        gs.run_command("r.colors", map=temp, color="viridis", quiet=True)
        renames.append((temp, name))
    if temporary_uncertainty:
        gs.run_command(
            "r.support",
            map=temporary_uncertainty,
            title="Uncertainty ({}) of the i.ann classification".format(
                options["uncertainty_method"]
            ),
            history=history,
        )
        gs.run_command("r.colors", map=temporary_uncertainty, color="magma", quiet=True)
        renames.append((temporary_uncertainty, options["uncertainty"]))
    for temp, name in renames:
        gs.run_command("g.rename", raster=(temp, name), overwrite=True, quiet=True)
        TEMPORARY_MAPS.remove(temp)
        gs.raster_history(name, overwrite=True)
    gs.message(_("Classified map written to <{}>").format(output))
    if probability_maps:
        gs.message(
            _("Probability maps written to <{}>").format(",".join(probability_maps))
        )
    if options["uncertainty"]:
        gs.message(_("Uncertainty map written to <{}>").format(options["uncertainty"]))
    if reference:
        report_accuracy(options, output, reference, metadata["classes"], counter)
    return 0


def classify_in_strips(
    options, flags, metadata, bands, readable, normalisation, nprocs
):
    """Run nprocs copies of the module, one per strip of rows, and merge them.

    Each copy reads its strip plus the margin (GRASS_REGION), so the merged
    cores equal a single run cell for cell. The same scheme splits a region
    across machines (see the manual).
    """
    import json
    import tempfile

    from iann.bundle import METADATA, MODEL_FILE
    from iann.errors import IannError
    from iann.prediction import (
        merge_strips,
        strip_region_env,
        strips,
        write_class_metadata,
    )

    region = gs.region()
    cores = strips(
        region["rows"],
        nprocs,
        int(metadata["margin"]),
        int(metadata.get("size_multiple", 1)),
    )
    bundle = options["model"]
    work = tempfile.mkdtemp(prefix="i.ann.classify.")
    TEMPORARY_FOLDERS.append(work)
    if normalisation is not None:
        # Statistics of the whole input, not of each strip: a bundle copy
        # carries them to the workers.
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        os.symlink(
            os.path.abspath(os.path.join(options["model"], MODEL_FILE)),
            os.path.join(bundle, MODEL_FILE),
        )
        changed = dict(
            metadata,
            normalisation={
                "method": "image",
                "mean": normalisation[0].tolist(),
                "std": normalisation[1].tolist(),
            },
        )
        with open(os.path.join(bundle, METADATA), "w") as f:
            json.dump(changed, f)
    base = gs.append_node_pid("tmp_iann_strip")
    values = [c["value"] for c in metadata["classes"]]
    processes = []
    gs.message(_("Classifying {} strips in {} processes").format(len(cores), nprocs))
    for i, (_start, _stop, low, high) in enumerate(cores):
        name = "{}_{}".format(base, i)
        TEMPORARY_MAPS.append(name)
        kwargs = dict(
            input=",".join(readable),
            model=bundle,
            output=name,
            tile_size=options["tile_size"],
            memory=options["memory"],
            uncertainty_method=options["uncertainty_method"],
            nprocs=1,
            quiet=True,
            overwrite=True,
        )
        if options["probabilities"]:
            kwargs["probabilities"] = name + "_p"
            TEMPORARY_MAPS.extend("{}_p_{}".format(name, v) for v in values)
        if options["uncertainty"]:
            kwargs["uncertainty"] = name + "_u"
            TEMPORARY_MAPS.append(name + "_u")
        env = dict(os.environ, GRASS_REGION=strip_region_env(region, low, high))
        processes.append(
            gs.start_command(
                "i.ann.classify", flags="t" if flags["t"] else "", env=env, **kwargs
            )
        )
    failed = [p.wait() for p in processes]
    if any(failed):
        raise IannError(_("A strip of the region failed to classify"))
    names = ["{}_{}".format(base, i) for i in range(len(cores))]
    temporary = base + "_merged"
    TEMPORARY_MAPS.append(temporary)
    merge_strips(temporary, names, cores)
    history = "i.ann.classify model={} input={} nprocs={}".format(
        os.path.abspath(options["model"]), ",".join(bands), nprocs
    )
    write_class_metadata(
        temporary,
        metadata,
        title="Land cover classified by i.ann ({})".format(metadata["architecture"]),
        history=history,
    )
    renames = [(temporary, options["output"])]
    if options["probabilities"]:
        for v in values:
            merged = "{}_p_{}".format(temporary, v)
            TEMPORARY_MAPS.append(merged)
            merge_strips(
                merged, ["{}_p_{}".format(n, v) for n in names], cores, "FCELL"
            )
            gs.run_command("r.colors", map=merged, color="viridis", quiet=True)
            renames.append((merged, "{}_{}".format(options["probabilities"], v)))
    if options["uncertainty"]:
        merged = temporary + "_u"
        TEMPORARY_MAPS.append(merged)
        merge_strips(merged, [n + "_u" for n in names], cores, "FCELL")
        gs.run_command("r.colors", map=merged, color="magma", quiet=True)
        renames.append((merged, options["uncertainty"]))
    for temp, name in renames:
        gs.run_command("g.rename", raster=(temp, name), overwrite=True, quiet=True)
        TEMPORARY_MAPS.remove(temp)
        gs.raster_history(name, overwrite=True)
    gs.message(_("Classified map written to <{}>").format(options["output"]))
    if options["reference"]:
        report_accuracy(
            options, options["output"], options["reference"], metadata["classes"], None
        )
    return 0


def check_report_files(options):
    """Refuse to overwrite a report or plot file without --overwrite."""
    from iann.folders import check_new_file

    if options["report"]:
        check_new_file(options["report"], gs.overwrite(), _("Report file"))
    if options["plot"]:
        check_new_file(options["plot"], gs.overwrite(), _("Plot file"))


def report_accuracy(options, classified, reference, classes, counter):
    """Print the accuracy report; write it as JSON and a plot when asked."""
    from iann.accuracy import (
        PairCounter,
        accuracy_report,
        format_report,
        plot_confusion,
        write_report,
    )
    from iann.grassio import RowReader, read_int_rows

    if counter is None:
        counter = PairCounter()
        readers = [RowReader(classified), RowReader(reference)]
        rows = gs.region()["rows"]
        try:
            for row0 in range(0, rows, 256):
                row1 = min(rows, row0 + 256)
                mapped, truth = (read_int_rows(r, row0, row1) for r in readers)
                counter.add(truth, mapped)
        finally:
            for reader in readers:
                reader.close()
    region = gs.region()
    mapped_cells = {
        int(value): int(count)
        for value, count in (
            line.split()
            for line in gs.read_command(
                "r.stats", input=classified, flags="cn", quiet=True
            ).splitlines()
        )
    }
    report = accuracy_report(
        counter,
        classes,
        mapped_cells=mapped_cells,
        cell_area=region["nsres"] * region["ewres"],
    )
    if report is None:
        gs.warning(
            _("Reference map <{}> has no labelled cell where <{}> has data").format(
                reference, classified
            )
        )
        return
    report["map"] = classified
    report["reference"] = reference
    if options["model"]:
        report["model"] = os.path.abspath(options["model"])
    print(format_report(report))
    if report["unseen_reference_classes"]:
        gs.warning(
            _("Reference map <{}> has classes the model never saw: {}").format(
                reference, ", ".join(str(v) for v in report["unseen_reference_classes"])
            )
        )
    if options["report"]:
        write_report(options["report"], report)
        gs.message(_("Accuracy report written to <{}>").format(options["report"]))
    if options["plot"]:
        plot_confusion(options["plot"], report)
        gs.message(_("Confusion matrix plot written to <{}>").format(options["plot"]))


def cleanup():
    import shutil

    for folder in TEMPORARY_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)
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
TEMPORARY_FOLDERS = []

if __name__ == "__main__":
    options, flags = gs.parser()
    atexit.register(cleanup)
    sys.exit(main(options, flags))
