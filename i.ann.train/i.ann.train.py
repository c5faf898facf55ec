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
# % required: no
# % description: Patch dataset folder written by i.ann.patches
# % guisection: Input
# %end
# %option
# % key: bands
# % type: string
# % required: no
# % multiple: yes
# % label: Bands of the dataset to train on (default: all)
# % description: Band map names as given to i.ann.patches, or their numbers (1 = first); with import, the names of the model's input bands, in order
# % guisection: Input
# %end
# %option
# % key: architecture
# % type: string
# % required: no
# % answer: fcn
# % label: Network architecture: fcn, unet, resunet, or a Python file
# % description: fcn: dilated dense FCN of Mboga et al. (2019); unet: U-Net; resunet: residual U-Net; a file defining build_model(input_shape, n_classes, **params)
# % guisection: Network
# %end
# %option
# % key: filters
# % type: integer
# % required: no
# % answer: 32
# % options: 1-100000
# % label: Number of filters (fcn: of each block; unet, resunet: of the first level)
# % description: Not used by architecture files (give their parameters with params)
# % guisection: Network
# %end
# %option
# % key: depth
# % type: integer
# % required: no
# % answer: 4
# % options: 1-8
# % label: Number of down-sampling levels of unet and resunet
# % description: The patch size must be a multiple of 2^depth
# % guisection: Network
# %end
# %option
# % key: params
# % type: string
# % required: no
# % multiple: yes
# % key_desc: key=value
# % label: Further parameters of the architecture
# % description: Passed to the builder, e.g. to build_model() of an architecture file
# % guisection: Network
# %end
# %option
# % key: pretrained
# % type: string
# % required: no
# % gisprompt: old,dir,dir
# % label: Model bundle to start from (fine-tuning)
# % description: Its architecture and weights are used; the classifier head is rebuilt when the classes differ
# % guisection: Network
# %end
# %option
# % key: freeze
# % type: string
# % required: no
# % multiple: yes
# % label: Layers of the pretrained model to keep fixed
# % description: Layer names or patterns (e.g. down*,bottom*), or copied for all layers taken from the pretrained model
# % guisection: Network
# %end
# %option
# % key: epochs
# % type: integer
# % required: no
# % answer: 20
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
# % description: Learning rate of the optimizer (its largest, with schedule=cosine)
# % guisection: Training
# %end
# %option
# % key: optimizer
# % type: string
# % required: no
# % answer: adam
# % options: adam,adamw,sgd
# % label: Optimizer of the network's weights
# % descriptions: adam;Adam;adamw;Adam with decoupled weight decay (0.004 of the learning rate per step, Keras' AdamW);sgd;stochastic gradient descent with Nesterov momentum 0.9 (wants a larger learning_rate, e.g. 0.01)
# % guisection: Training
# %end
# %option
# % key: schedule
# % type: string
# % required: no
# % answer: constant
# % options: constant,cosine
# % label: Learning rate over the epochs
# % descriptions: constant;learning_rate throughout;cosine;rises linearly to learning_rate in the first epoch, then falls to 0 along a half cosine
# % guisection: Training
# %end
# %option
# % key: loss
# % type: string
# % required: no
# % answer: crossentropy
# % options: crossentropy,focal,dice,tversky,lovasz
# % description: Loss function (unlabelled cells are left out)
# % descriptions: crossentropy;cross-entropy of the class probabilities;focal;focal loss, which weighs hard cells more;dice;cross-entropy plus a soft Dice term per class, in which rare classes weigh as much as common ones;tversky;cross-entropy plus a soft Tversky term per class (missed cells weigh 0.7, false alarms 0.3);lovasz;cross-entropy plus the Lovasz-softmax term per class (a surrogate of the Jaccard index)
# % guisection: Training
# %end
# %option
# % key: gamma
# % type: double
# % required: no
# % answer: 2
# % description: Focusing parameter of the focal loss
# % guisection: Training
# %end
# %option
# % key: class_weight
# % type: string
# % required: no
# % answer: none
# % label: Class weights in the loss: none, balanced, sqrt, or a file
# % description: balanced: inverse of each class's share of the training cells; sqrt: inverse square root of it; file: lines of 'class_value weight'
# % guisection: Training
# %end
# %option
# % key: augmentation
# % type: string
# % required: no
# % answer: dihedral
# % options: dihedral,none
# % description: Augmentation of the training patches, drawn afresh each epoch
# % descriptions: dihedral;each patch gets one of its 8 flips and 90-degree rotations;none;patches as they are
# % guisection: Training
# %end
# %option
# % key: ema
# % type: double
# % required: no
# % answer: 0.99
# % label: Momentum of the moving average of the weights that is kept (0: none)
# % description: Each step adds 1 - ema of the new weights to the average; validation, the kept epoch and the bundle use the average
# % guisection: Training
# %end
# %option
# % key: decision
# % type: string
# % required: no
# % answer: argmax
# % options: argmax,macro_f1,class_f1,class_recall
# % label: Decision rule of the class maps, learnt on the validation patches
# % description: A bias per class added to the log-probabilities before the most probable class is taken; stored in the bundle, applied by i.ann.classify
# % descriptions: argmax;the most probable class;macro_f1;class biases with the highest validation macro F1;class_f1;the bias of decision_class with its highest validation F1;class_recall;the smallest bias of decision_class that reaches decision_recall
# % guisection: Decision
# %end
# %option
# % key: decision_class
# % type: string
# % required: no
# % label: Class of decision=class_f1 or class_recall (value or label)
# % guisection: Decision
# %end
# %option
# % key: decision_recall
# % type: double
# % required: no
# % answer: 0.5
# % label: Validation recall decision=class_recall aims at
# % options: 0-1
# % guisection: Decision
# %end
# %option
# % key: monitor
# % type: string
# % required: no
# % answer: val_loss
# % options: val_loss,val_overall_accuracy,val_kappa,val_macro_f1
# % label: Validation figure that chooses the kept epoch and stops early
# % descriptions: val_loss;loss on the validation patches (lowest);val_overall_accuracy;overall accuracy of the validation cells (highest);val_kappa;Cohen's kappa of the validation cells (highest);val_macro_f1;mean F1 of the classes (highest), for rare classes
# % guisection: Training
# %end
# %option
# % key: patience
# % type: integer
# % required: no
# % answer: 0
# % options: 0-100000
# % label: Stop after this many epochs without a better monitor= figure
# % description: 0: never stop early; the model of the best epoch is kept either way
# % guisection: Training
# %end
# %option
# % key: precision
# % type: string
# % required: no
# % answer: float32
# % options: float32,mixed_bfloat16,mixed_float16
# % label: Numerical precision of training
# % description: Mixed precisions compute in 16 bits with float32 weights (GPUs); mixed_float16 on a CPU falls back to float32; the bundle holds float32 weights either way
# % guisection: Training
# %end
# %option
# % key: seed
# % type: integer
# % required: no
# % answer: 1
# % description: Seed of the random number generators (weights, shuffling, augmentation)
# % guisection: Training
# %end
# %flag
# % key: n
# % label: With pretrained: standardise with this dataset's statistics
# % description: For other imagery (sensor, bit depth); by default the pretrained model's normalisation is kept
# % guisection: Network
# %end
# %flag
# % key: r
# % description: Resume an interrupted training from its checkpoint (same settings)
# % guisection: Training
# %end
# %option
# % key: output
# % type: string
# % required: no
# % gisprompt: new,file,file
# % label: Name of the model bundle folder to create
# % description: model.keras, model.onnx and metadata.json, read by i.ann.classify
# % guisection: Output
# %end
# %option G_OPT_F_OUTPUT
# % key: plot
# % required: no
# % label: Name of a PNG file for the loss and accuracy curves
# % guisection: Output
# %end
# %option G_OPT_M_DIR
# % key: export
# % required: no
# % label: Only add model.onnx, or with inference_precision its reduced precisions, to this existing model bundle (no training)
# % description: model.onnx for bundles written without one (replaced only with --overwrite); reduced precisions need input= (calibration and check)
# % guisection: Output
# %end
# %option
# % key: inference_precision
# % type: string
# % required: no
# % multiple: yes
# % options: int8,bfloat16
# % label: Reduced precisions of i.ann.classify to make and check on this kind of CPU
# % description: On the validation patches: classes as float32's on 99.5% of cells, kappa at most 0.005 lower; with export=, for an existing bundle
# % descriptions: int8;model.int8.onnx, calibrated on training patches (OpenVINO, ONNX Runtime);bfloat16;OpenVINO in bfloat16, on CPUs with native bfloat16
# % guisection: Precision
# %end
# %option
# % key: calibration_patches
# % type: integer
# % required: no
# % answer: 256
# % options: 16-100000
# % label: Training patches the int8 model is calibrated on
# % description: Drawn with seed=; all of them when the dataset has fewer
# % guisection: Precision
# %end
# %option G_OPT_M_DIR
# % key: decide
# % required: no
# % label: Only learn the decision rule of this existing model bundle (no training)
# % description: On the validation patches of input, by decision=; replaces an existing rule only with --overwrite
# % guisection: Decision
# %end
# %option G_OPT_F_INPUT
# % key: import
# % required: no
# % label: Only make a bundle of this ONNX segmentation model trained elsewhere (no training)
# % description: Channels first: (batch, bands, rows, cols) in, (batch, classes, rows, cols) scores or probabilities out
# % guisection: Import
# %end
# %option
# % key: classes
# % type: string
# % required: no
# % multiple: yes
# % key_desc: value:label
# % label: With import: the model's classes, in the order of its outputs
# % description: value:label, or a label alone (its value: its position, from 0); default: the file's Deepness class_names
# % guisection: Import
# %end
# %option
# % key: mean
# % type: double
# % required: no
# % multiple: yes
# % label: With import: each band's mean, in the units of the maps (x - mean) / std
# % description: Default: the file's Deepness standardization_mean, times 255
# % guisection: Import
# %end
# %option
# % key: std
# % type: double
# % required: no
# % multiple: yes
# % label: With import: each band's standard deviation, in the units of the maps
# % description: Default: the file's Deepness standardization_std, times 255
# % guisection: Import
# %end
# %option
# % key: margin
# % type: integer
# % required: no
# % label: With import: cells read around each tile, for tiles without seams
# % description: Default: half the overlap the file's Deepness metadata states, else measured on the model
# % guisection: Import
# %end
# %rules
# % required: input, export, import
# % exclusive: export, import
# % exclusive: input, import
# % requires: input, output, decide, export
# % requires: inference_precision, input
# % exclusive: output, decide
# % requires: decide, input
# % requires: import, output
# % exclusive: export, output
# % requires: freeze, pretrained
# % requires: classes, import
# % requires: mean, import
# % requires: std, import
# % requires: margin, import
# % collective: mean, std
# %end

import os
import shutil
import sys

import grass.script as gs

# The library: lib/ of the source tree, or etc/i.ann of the installed addon,
# found from this script's own folder because grass-session moves
# GRASS_ADDON_BASE (gs.utils.set_path would look there, or in the cwd).
sys.path[:0] = [
    os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", folder)
    for folder in ("lib", os.path.join("etc", "i.ann"))
]


def training_settings(options, flags):
    """The training settings from the module's options."""
    from iann.train.settings import TrainingSettings, parse_params

    def listed(key):
        return [item for item in options[key].split(",") if item] or None

    return TrainingSettings(
        architecture=options["architecture"],
        filters=int(options["filters"]),
        depth=int(options["depth"]),
        params=parse_params(options["params"]),
        epochs=int(options["epochs"]),
        batch_size=int(options["batch_size"]),
        learning_rate=float(options["learning_rate"]),
        schedule=options["schedule"],
        optimizer=options["optimizer"],
        loss=options["loss"],
        gamma=float(options["gamma"]),
        class_weight=options["class_weight"],
        augment=options["augmentation"] == "dihedral",
        ema=float(options["ema"]),
        patience=int(options["patience"]),
        monitor=options["monitor"],
        seed=int(options["seed"]),
        bands=listed("bands"),
        pretrained=options["pretrained"] or None,
        freeze=listed("freeze"),
        dataset_statistics=flags["n"],
        precision=options["precision"],
        decision=options["decision"],
        decision_class=options["decision_class"] or None,
        decision_recall=float(options["decision_recall"]),
        inference_precision=listed("inference_precision"),
        calibration_patches=int(options["calibration_patches"]),
    )


def import_model(options):
    """A bundle of an ONNX model trained elsewhere (import=)."""
    from iann.formats.bundle import write_metadata
    from iann.formats.folders import atomic_folder, check_new_folder
    from iann.predict.onnx_import import import_onnx

    def listed(key):
        return [item for item in options[key].split(",") if item] or None

    def numbers(key):
        return [float(item) for item in listed(key)] if options[key] else None

    output = check_new_folder(options["output"], gs.overwrite(), _("Model bundle"))
    with atomic_folder(output, gs.overwrite()) as folder:
        metadata = import_onnx(
            options["import"],
            folder,
            classes=listed("classes"),
            bands=listed("bands"),
            mean=numbers("mean"),
            std=numbers("std"),
            margin=int(options["margin"]) if options["margin"] else None,
        )
        write_metadata(folder, metadata)
    imported = metadata.imported
    gs.message(
        _(
            "Imported <{}> into <{}>: {} bands, {} classes, {}, tiles of {}, "
            "margin {} cells ({})"
        ).format(
            options["import"],
            output,
            len(metadata.bands),
            len(metadata.classes),
            imported["output"],
            imported["input_size"] or _("any size"),
            metadata.margin,
            metadata.receptive_field_method,
        )
    )


def decide(options, flags):
    """The decision rule of an existing bundle, learnt anew (decide=)."""
    from iann.train.decision import add_decision_rule

    metadata = add_decision_rule(
        options["decide"],
        options["input"],
        training_settings(options, flags),
        gs.overwrite(),
    )
    if metadata.decision is None:
        gs.message(
            _("Bundle <{}> maps the most probable class").format(options["decide"])
        )
    else:
        gs.message(
            _("Decision rule {} written to <{}>").format(
                metadata.decision["rule"], options["decide"]
            )
        )


def reduced_precisions(options, settings, bundle):
    """The reduced precisions asked for, made and checked in `bundle`."""
    from iann.train.precision import add_reduced_precisions

    if settings.inference_precision:
        add_reduced_precisions(
            bundle,
            options["input"],
            settings.inference_precision,
            settings.calibration_patches,
            settings.seed,
            gs.overwrite(),
        )


def export(options, flags):
    """model.onnx (export=), and the reduced precisions asked for."""
    from iann.formats.bundle import ONNX_FILE
    from iann.predict.onnx_export import add_onnx_to_bundle

    bundle = options["export"]
    has_onnx = os.path.isfile(os.path.join(bundle, ONNX_FILE))
    if not (options["inference_precision"] and has_onnx):
        seconds = add_onnx_to_bundle(bundle, gs.overwrite())
        gs.message(_("Added {} to <{}> ({:.1f} s)").format(ONNX_FILE, bundle, seconds))
    reduced_precisions(options, training_settings(options, flags), bundle)


def main(options, flags):
    from iann.errors import IannError
    from iann.formats.folders import atomic_folder, check_new_file, check_new_folder

    try:
        if options["export"]:
            return export(options, flags)
        if options["import"]:
            import_model(options)
            return
        if options["decide"]:
            return decide(options, flags)
        output = check_new_folder(options["output"], gs.overwrite(), _("Model bundle"))
        plot = options["plot"]
        if plot:
            plot = check_new_file(plot, gs.overwrite(), _("Plot file"))
        settings = training_settings(options, flags)
        from iann.train.plots import plot_history
        from iann.train.run import checkpoint_folder, train
        from iann.train.saving import save_bundle

        checkpoint = checkpoint_folder(output, resume=flags["r"])
        model, metadata = train(
            options["input"], settings, checkpoint=checkpoint, resume=flags["r"]
        )
        with atomic_folder(output, gs.overwrite()) as folder:
            metadata, problem = save_bundle(folder, model, metadata)
            if not problem:
                reduced_precisions(options, settings, folder)
        if problem:
            gs.warning(
                _(
                    "No model.onnx in <{}>: the network cannot be exported ({}); "
                    "i.ann.classify will use Keras"
                ).format(output, problem)
            )
        shutil.rmtree(checkpoint, ignore_errors=True)
        if plot:
            plot_history(
                metadata.training["history"],
                plot,
                title="{} on {}".format(
                    os.path.basename(metadata.architecture),
                    os.path.basename(options["input"].rstrip(os.sep)),
                ),
            )
    except IannError as error:
        gs.fatal(str(error))
    training = metadata.training
    gs.message(
        _(
            "Saved the model of epoch {} of {} (receptive field {} cells) to <{}>"
        ).format(
            training["best_epoch"],
            training["epochs_run"],
            metadata.receptive_field,
            output,
        )
    )
    if plot:
        gs.message(_("Training curves drawn in <{}>").format(plot))


if __name__ == "__main__":
    sys.exit(main(*gs.parser()))
