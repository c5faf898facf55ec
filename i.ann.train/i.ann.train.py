#!/usr/bin/env python3

############################################################################
#
# MODULE:       i.ann.train
# AUTHOR(S):    i.ann developers
# PURPOSE:      Trains a fully convolutional network on a patch dataset and
#               saves a model bundle for i.ann.classify
# COPYRIGHT:    (C) 2026 by the i.ann developers
#
#               This program is free software under the GNU General Public
#               License (>=v2). Read the file COPYING that comes with GRASS
#               for details.
#
############################################################################

# %module
# % description: Trains a fully convolutional network on patches from i.ann.patches.
# % keyword: imagery
# % keyword: classification
# % keyword: deep learning
# % keyword: neural network
# %end
# %option G_OPT_M_DIR
# % key: input
# % description: Patch dataset folder written by i.ann.patches
# % guisection: Input
# %end
# %option
# % key: output
# % type: string
# % required: yes
# % gisprompt: new,file,file
# % label: Name of the model bundle folder to create
# % description: Keras model and metadata.json, read by i.ann.classify
# % guisection: Output
# %end
# %option
# % key: architecture
# % type: string
# % required: no
# % answer: fcn
# % options: fcn
# % description: Network architecture
# % descriptions: fcn;dilated dense FCN of Mboga et al. (2019)
# % guisection: Network
# %end
# %option
# % key: filters
# % type: integer
# % required: no
# % answer: 64
# % options: 1-1024
# % description: Number of filters of each convolution block
# % guisection: Network
# %end
# %option
# % key: epochs
# % type: integer
# % required: no
# % answer: 10
# % options: 1-100000
# % description: Number of training epochs
# % guisection: Training
# %end
# %option
# % key: batch_size
# % type: integer
# % required: no
# % answer: 32
# % options: 1-100000
# % description: Number of patches per training step
# % guisection: Training
# %end
# %option
# % key: learning_rate
# % type: double
# % required: no
# % answer: 0.001
# % description: Learning rate of the Adam optimizer
# % guisection: Training
# %end
# %option
# % key: seed
# % type: integer
# % required: no
# % answer: 1
# % description: Seed of the random number generators (weights, shuffling)
# % guisection: Training
# %end

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
    from iann.folders import atomic_folder, check_new_folder

    try:
        output = check_new_folder(options["output"], gs.overwrite(), _("Model bundle"))
        from iann.bundle import save_bundle
        from iann.training import train

        model, metadata = train(
            options["input"],
            architecture=options["architecture"],
            epochs=int(options["epochs"]),
            batch_size=int(options["batch_size"]),
            learning_rate=float(options["learning_rate"]),
            seed=int(options["seed"]),
            filters=int(options["filters"]),
        )
        with atomic_folder(output, gs.overwrite()) as folder:
            save_bundle(folder, model, metadata)
    except IannError as error:
        gs.fatal(str(error))
    training = metadata["training"]
    gs.message(
        _(
            "Saved the model of epoch {} of {} (receptive field {} cells) to <{}>"
        ).format(
            training["best_epoch"],
            training["epochs_run"],
            metadata["receptive_field"],
            output,
        )
    )


if __name__ == "__main__":
    sys.exit(main(*gs.parser()))
