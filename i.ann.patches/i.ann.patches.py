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
# % description: Name of the image bands (optical and height), in a fixed order
# % guisection: Input
# %end
# %option G_OPT_R_INPUT
# % key: reference
# % description: Integer map of reference classes (NULL: unlabelled)
# % guisection: Input
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
# %option
# % key: size
# % type: integer
# % required: no
# % answer: 64
# % options: 8-4096
# % description: Patch size in cells (rows and columns)
# % guisection: Sampling
# %end
# %option
# % key: number
# % type: integer
# % required: no
# % answer: 1000
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
# % key: min_labelled
# % type: double
# % required: no
# % answer: 50
# % options: 0-100
# % description: Minimum percentage of labelled reference cells in a patch
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
    from iann.dataset import create_patches, write_dataset
    from iann.errors import IannError
    from iann.folders import check_new_folder

    bands = options["input"].split(",")
    try:
        output = check_new_folder(
            options["output"], gs.overwrite(), _("Dataset folder")
        )
        arrays, metadata = create_patches(
            bands,
            options["reference"],
            size=int(options["size"]),
            number=int(options["number"]),
            validation=float(options["validation"]),
            seed=int(options["seed"]),
            min_labelled=float(options["min_labelled"]),
        )
        write_dataset(output, arrays, metadata, overwrite=gs.overwrite())
    except IannError as error:
        gs.fatal(str(error))
    counts = metadata["counts"]
    gs.message(
        _(
            "Wrote {} training and {} validation patches of {} x {} cells to <{}>"
        ).format(
            counts["train"]["patches"],
            counts["validation"]["patches"],
            metadata["patch_size"],
            metadata["patch_size"],
            output,
        )
    )
    for c, n in zip(metadata["classes"], counts["train"]["pixels_per_class"]):
        gs.verbose(
            _("Class {} ({}): {} training cells").format(c["value"], c["label"], n)
        )


if __name__ == "__main__":
    sys.exit(main(*gs.parser()))
