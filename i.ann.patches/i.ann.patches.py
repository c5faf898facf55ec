#!/usr/bin/env python3

############################################################################
#
# MODULE:       i.ann.patches
# AUTHOR(S):    i.ann developers
# PURPOSE:      Samples training and validation patches of image bands and a
#               reference class map for fully convolutional networks
# COPYRIGHT:    (C) 2026 by the i.ann developers
#
#               This program is free software under the GNU General Public
#               License (>=v2). Read the file COPYING that comes with GRASS
#               for details.
#
############################################################################

# %module
# % description: Samples image patches and reference labels to train a neural network.
# % keyword: imagery
# % keyword: classification
# % keyword: deep learning
# % keyword: land cover
# %end
# %option G_OPT_R_INPUTS
# % required: no
# % description: Name of the image bands (optical and height), in a fixed order
# % guisection: Input
# %end
# %option G_OPT_I_GROUP
# % required: no
# % description: Imagery group of the bands (members in i.group -g order)
# % guisection: Input
# %end
# %option G_OPT_R_INPUT
# % key: reference
# % required: no
# % description: Integer raster map of reference classes (NULL: unlabelled)
# % guisection: Input
# %end
# %option G_OPT_V_INPUTS
# % key: training
# % required: no
# % label: Vector maps of reference classes (points, lines or areas)
# % description: Rasterised on the region's grid (where maps overlap, the first wins); cells without a feature are unlabelled
# % guisection: Input
# %end
# %option G_OPT_V_FIELD
# % guisection: Input
# %end
# %option G_OPT_DB_COLUMN
# % description: Integer column of the training vector maps holding the class values
# % guisection: Input
# %end
# %option G_OPT_DB_COLUMN
# % key: label_column
# % description: Column of the training vector maps holding the class names
# % guisection: Input
# %end
# %option
# % key: resample
# % type: string
# % required: no
# % answer: bilinear
# % options: nearest,bilinear,bicubic
# % description: Interpolation of bands coarser than the region (r.resamp.interp)
# % guisection: Input
# %end
# %option
# % key: size
# % type: integer
# % required: no
# % answer: 32
# % options: 8-4096
# % description: Patch size in cells (rows and columns)
# % guisection: Sampling
# %end
# %option
# % key: sampling
# % type: string
# % required: no
# % answer: balanced
# % options: random,grid,balanced
# % description: How patch positions are drawn
# % descriptions: random;uniformly among the patches that fit;grid;on a regular grid of stride cells;balanced;stratified by the class of the centre cell, for rare classes
# % guisection: Sampling
# %end
# %option
# % key: stride
# % type: integer
# % required: no
# % description: Grid step in cells for sampling=grid (default: the patch size)
# % guisection: Sampling
# %end
# %option
# % key: number
# % type: integer
# % required: no
# % answer: 2000
# % options: 1-10000000
# % description: Number of patches to sample (training and validation together)
# % guisection: Sampling
# %end
# %option
# % key: validation
# % type: double
# % required: no
# % answer: 0.2
# % options: 0-0.9
# % description: Fraction of the patches kept for validation
# % guisection: Sampling
# %end
# %option
# % key: split
# % type: string
# % required: no
# % answer: random
# % options: blocks,random
# % description: How patches are split into training and validation
# % descriptions: blocks;whole spatial blocks go to one side, no overlap;random;patches at random (validation may overlap training)
# % guisection: Sampling
# %end
# %option
# % key: block_size
# % type: double
# % required: no
# % description: Side of the split's blocks in map units (default: 4 patch sizes)
# % guisection: Sampling
# %end
# %option
# % key: min_labelled
# % type: double
# % required: no
# % label: Minimum labelled reference cells in a patch
# % description: Percent of its cells for a raster reference (default: 50); number of cells for a vector one (default: 1)
# % guisection: Sampling
# %end
# %option
# % key: seed
# % type: integer
# % required: no
# % answer: 1
# % description: Seed of the random number generator (same seed, same patches)
# % guisection: Sampling
# %end
# %flag
# % key: n
# % description: Keep patches with NULL band cells (filled with the band mean, masked)
# % guisection: Sampling
# %end
# %option
# % key: output
# % type: string
# % required: yes
# % gisprompt: new,file,file
# % label: Name of the patch dataset folder to create
# % description: NumPy arrays and metadata.json, read by i.ann.train
# % guisection: Output
# %end
# %option G_OPT_R_OUTPUT
# % key: validation_map
# % required: no
# % description: Raster map of the split (1: validation blocks, 0: training)
# % guisection: Output
# %end
# %flag
# % key: p
# % description: Print the patch counts per class and split, write nothing
# % guisection: Output
# %end
# %rules
# % exclusive: input, group
# % required: input, group
# % exclusive: reference, training
# % required: reference, training
# % requires: training, column
# % requires: column, training
# % requires: label_column, training
# %end

import atexit
import os
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
    from iann.formats.dataset import summary
    from iann.formats.folders import check_new_folder
    from iann.grass.rasters import check_new_raster, group_members
    from iann.grass.reference import check_vector_reference, rasterise
    from iann.grass.temporary import remove_dead_runs_maps
    from iann.patches.plan import Sampling, create_patches
    from iann.patches.write import write_dataset, write_validation_map

    validation_map = options["validation_map"]
    if validation_map and options["split"] != "blocks":
        gs.fatal(_("validation_map needs split=blocks"))
    try:
        remove_dead_runs_maps()
        check_new_raster(validation_map, gs.overwrite())
        if options["input"]:
            bands = options["input"].split(",")
        else:
            bands = group_members(options["group"])
        output = options["output"]
        if not flags["p"]:
            output = check_new_folder(output, gs.overwrite(), _("Dataset folder"))
        vector = None
        reference = options["reference"]
        if options["training"]:
            vector = check_vector_reference(
                options["training"],
                options["column"],
                options["label_column"],
                options["layer"],
            )
            reference = rasterise(vector, TEMPORARY_MAPS)
        min_labelled = options["min_labelled"] or ("1" if vector else "50")
        sampling = Sampling(
            size=int(options["size"]),
            number=int(options["number"]),
            validation=float(options["validation"]),
            seed=int(options["seed"]),
            min_labelled=float(min_labelled),
            method=options["sampling"],
            stride=int(options["stride"]) if options["stride"] else None,
            split=options["split"],
            block_size=float(options["block_size"]) if options["block_size"] else None,
            resample=options["resample"],
            keep_nulls=flags["n"],
            sparse=vector is not None,
        )
        if not vector and not 0 <= sampling.min_labelled <= 100:
            gs.fatal(
                _("min_labelled={} is not a percentage (0 to 100)").format(min_labelled)
            )
        if sampling.min_labelled < 0:
            gs.fatal(_("min_labelled={} is negative").format(min_labelled))
        plan = create_patches(bands, reference, sampling, TEMPORARY_MAPS, vector)
        metadata = plan.metadata
        if flags["p"]:
            print(summary(metadata))
            return 0
        write_dataset(output, plan, overwrite=gs.overwrite())
    except IannError as error:
        gs.fatal(str(error))
    except KeyboardInterrupt:
        gs.fatal(_("Interrupted; nothing was written"))
    if validation_map:
        write_validation_map(validation_map, plan.validation_cells)
        gs.raster_history(validation_map, overwrite=True)
    counts = metadata.counts
    gs.message(
        _(
            "Wrote {} training and {} validation patches of {} x {} cells to <{}>"
        ).format(
            counts["train"]["patches"],
            counts["validation"]["patches"],
            metadata.patch_size,
            metadata.patch_size,
            output,
        )
    )
    gs.verbose(summary(metadata))
    return 0


def cleanup():
    if TEMPORARY_MAPS:  # the library is imported then
        from iann.grass.rasters import remove_maps

        remove_maps(TEMPORARY_MAPS)


TEMPORARY_MAPS = []

if __name__ == "__main__":
    options, flags = gs.parser()
    atexit.register(cleanup)
    sys.exit(main(options, flags))
