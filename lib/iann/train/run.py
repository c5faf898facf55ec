"""Training a network on a patch dataset, up to the metadata of its bundle.

The orchestration only; its parts have modules of their own in train/:
settings (the options, bands, class weights), batches, callbacks,
epoch_metrics, checkpoints, devices (GPUs, precision), transfer
(fine-tuning), plots and saving; the losses are in nn/.
"""

import dataclasses
import datetime
import os
import shutil

import numpy as np

import grass.script as gs
import keras

from iann import __version__
from iann.errors import IannError
from iann.formats.bundle import BundleMetadata
from iann.formats.dataset import DatasetMetadata, load_dataset
from iann.nn.architectures import (
    ARCHITECTURES,
    build_model,
    check_output_shape,
    is_custom,
    size_multiple,
    with_precision,
)
from iann.nn.losses import LOSSES, make_loss
from iann.nn.normalise import band_transform, bundle_transform
from iann.nn.receptive_field import receptive_field
from iann.nn.saving import load_bundle
from iann.predict.tiling import tiling_margin
from iann.train.batches import EpochOrder, PatchSequence
from iann.train.callbacks import GrassProgress, MallocTuning
from iann.train.checkpoints import Checkpoint, restore_checkpoint, resumable_state
from iann.train.decision import check_decision_settings, decision_rule
from iann.train.devices import (
    data_parallel_scope,
    precision_policy,
    training_device,
    training_precision,
)
from iann.train.epoch_metrics import MONITORS, ValidationMetrics
from iann.train.settings import TrainingSettings, class_weights_for, select_bands
from iann.train.transfer import pretrained_architecture, transfer_weights


@dataclasses.dataclass
class Prepared:
    """Everything checked and built before training starts."""

    data_meta: DatasetMetadata  # the dataset's metadata.json
    arrays: dict  # its patches and labels (memory-mapped)
    band_indices: list  # the dataset's bands trained on
    model: keras.Model  # compiled, pretrained weights copied, layers frozen
    architecture: str  # a built-in name or the path of a custom file
    params: dict  # the builder's parameters
    multiple: int  # rows and columns of an input are multiples of this
    pretrained_meta: BundleMetadata = None  # the pretrained bundle's metadata
    copied: list = dataclasses.field(default_factory=list)  # layers copied

    @property
    def all_bands(self):
        return self.band_indices == list(range(len(self.data_meta.bands)))


def model_settings(settings):
    """Architecture and its parameters from the settings."""
    architecture = settings.architecture
    params = dict(settings.params)
    if not is_custom(architecture):
        if settings.filters is not None:
            params.setdefault("filters", settings.filters)
        if architecture in ("unet", "resunet"):
            params.setdefault("depth", settings.depth)
    return architecture, params


def pretrained_network(settings, n_bands):
    """Metadata, model, architecture and parameters of the pretrained bundle."""
    metadata, model = load_bundle(settings.pretrained)
    if len(metadata.bands) != n_bands:
        raise IannError(
            _("Pretrained model <{}> takes {} bands, the training data has {}").format(
                settings.pretrained, len(metadata.bands), n_bands
            )
        )
    architecture, params = pretrained_architecture(settings.pretrained, metadata)
    asked = {
        key: value
        for key, value in settings.changed().items()
        if key in ("architecture", "filters", "params")
    }
    if asked:
        gs.warning(
            _("The network of <{}> is used as it is; ignored: {}").format(
                settings.pretrained,
                ", ".join("{}={}".format(k, v) for k, v in asked.items()),
            )
        )
    return metadata, model, architecture, params


def prepare(dataset, settings):
    """Load the dataset, build and compile the network: a Prepared record.

    With a pretrained bundle, its network is built and its weights copied
    (the classifier class by class) and the `freeze` layers fixed.
    """
    if not 0 <= settings.ema < 1:
        raise IannError(
            _("ema= must be at least 0 and below 1, not {}").format(settings.ema)
        )
    data_meta, arrays = load_dataset(dataset)
    band_indices = select_bands(settings.bands, data_meta.bands)
    n_bands = len(band_indices)
    n_classes = len(data_meta.classes)
    patch_size = int(data_meta.patch_size)
    if settings.loss not in LOSSES:
        raise IannError(_("Unknown loss <{}>").format(settings.loss))
    check_decision_settings(settings, data_meta.classes)
    if settings.optimizer not in OPTIMIZERS:
        raise IannError(_("Unknown optimizer <{}>").format(settings.optimizer))
    if settings.freeze and not settings.pretrained:
        raise IannError(_("freeze= needs a pretrained= model"))
    pretrained_meta = pretrained_model = None
    if settings.pretrained:
        pretrained_meta, pretrained_model, architecture, params = pretrained_network(
            settings, n_bands
        )
    else:
        architecture, params = model_settings(settings)
    multiple = size_multiple(architecture, params)
    if architecture in ARCHITECTURES and "depth" in params and patch_size % multiple:
        raise IannError(
            _(
                "Architecture <{}> with depth {} needs patches whose size is a "
                "multiple of {}; the dataset's patches are {} cells"
            ).format(architecture, params["depth"], multiple, patch_size)
        )
    keras.utils.set_random_seed(settings.seed)
    with data_parallel_scope(), precision_policy(settings.precision):
        model = build_model(architecture, (None, None, n_bands), n_classes, **params)
        check_output_shape(model, architecture, patch_size, n_bands, n_classes)
        copied = []
        if pretrained_model is not None:
            copied = transfer_weights(
                model,
                pretrained_model,
                settings.freeze,
                [c["value"] for c in pretrained_meta.classes],
                [c["value"] for c in data_meta.classes],
            )
        steps = -(-len(arrays["train_images"]) // settings.batch_size)
        model.compile(
            optimizer=make_optimizer(settings, learning_rate(settings, steps)),
            loss=make_loss(settings.loss, settings.gamma),
            weighted_metrics=["accuracy"],
        )
    return Prepared(
        data_meta,
        arrays,
        band_indices,
        model,
        architecture,
        params,
        multiple,
        pretrained_meta,
        copied,
    )


# The optimizers of i.ann.train: the Keras class and its own options.
OPTIMIZERS = {
    "adam": (keras.optimizers.Adam, {}),
    "adamw": (keras.optimizers.AdamW, {}),
    "sgd": (keras.optimizers.SGD, {"momentum": 0.9, "nesterov": True}),
}


def make_optimizer(settings, rate):
    """The optimizer of `settings` at a learning rate or schedule.

    With ema=, it keeps the moving average of the weights.
    """
    kind, options = OPTIMIZERS[settings.optimizer]
    if settings.ema:
        options = dict(options, use_ema=True, ema_momentum=settings.ema)
    return kind(learning_rate=rate, **options)


def learning_rate(settings, steps_per_epoch):
    """The learning rate, or its schedule over the training's steps.

    cosine: a linear warm-up over the first epoch (Adam's first steps are
    the noisiest), then a half cosine down to 0 at the last epoch.
    """
    if settings.schedule == "constant":
        return settings.learning_rate
    warmup = steps_per_epoch
    total = max(warmup + 1, settings.epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total - warmup,
        warmup_target=settings.learning_rate,
        warmup_steps=warmup,
    )


def input_transform(ready, settings):
    """Mean and standard deviation the bands are standardised with.

    The dataset's; with a pretrained bundle, that bundle's (its weights
    expect the inputs scaled as in its training) unless `dataset_statistics`.
    """
    if ready.pretrained_meta is not None and not settings.dataset_statistics:
        return bundle_transform(ready.pretrained_meta)
    return band_transform(ready.data_meta.statistics, ready.band_indices)


def patch_sequences(ready, settings, transform, class_weights, start):
    """The training batches (from epoch `start`) and validation batches."""
    mean, std = transform
    options = {
        "batch_size": settings.batch_size,
        "mean": mean,
        "std": std,
        "class_weights": class_weights,
        "band_indices": None if ready.all_bands else ready.band_indices,
        "seed": settings.seed,
        "workers": 2,
    }
    arrays = ready.arrays
    train_data = PatchSequence(
        arrays["train_images"],
        arrays["train_labels"],
        augment=settings.augment,
        shuffle=True,
        epoch=start,
        **options,
    )
    validation_data = None
    if len(arrays["validation_images"]):
        validation_data = PatchSequence(
            arrays["validation_images"],
            arrays["validation_labels"],
            shuffle=False,
            **options,
        )
    return train_data, validation_data


def fit(ready, settings, transform, class_weights, checkpoint=None, state=None):
    """Train the prepared network; the GrassProgress of the run.

    With a checkpoint `state`, training goes on after its last epoch.
    """
    arrays = ready.arrays
    monitor = settings.monitor
    if not len(arrays["validation_images"]):
        gs.warning(
            _(
                "The dataset has no validation patches: {} cannot be computed; "
                "the training loss chooses the kept epoch instead"
            ).format(monitor)
        )
        monitor = "loss"
    progress = GrassProgress(
        settings.epochs,
        monitor,
        settings.patience,
        state["progress"] if state is not None else None,
        mode=MONITORS.get(monitor, "min"),
    )
    start = 0
    if state is not None:
        progress.best_weights = restore_checkpoint(ready.model, checkpoint, state)
        start = state["epochs_done"]
        gs.message(
            _("Resuming from epoch {} of checkpoint <{}>").format(start, checkpoint)
        )
    train_data, validation_data = patch_sequences(
        ready, settings, transform, class_weights, start
    )
    gs.message(
        _("Training <{}> on {} patches ({} for validation), {}").format(
            os.path.basename(ready.architecture),
            len(arrays["train_images"]),
            len(arrays["validation_images"]),
            training_device(),
        )
    )
    if ready.copied:
        gs.verbose(
            _("Weights of {} layers taken from <{}>").format(
                len(ready.copied), settings.pretrained
            )
        )
    callbacks = [EpochOrder(train_data), MallocTuning()]
    if settings.ema:
        callbacks.insert(0, AveragedWeights(resumed=state is not None))
    if validation_data is not None:
        callbacks.append(
            ValidationMetrics(
                validation_data,
                arrays["validation_labels"],
                [c["value"] for c in ready.data_meta.classes],
            )
        )
    callbacks.append(progress)
    if checkpoint:
        # The folder is made by the first epoch's checkpoint: a run that
        # fails before leaves none.
        callbacks.append(Checkpoint(checkpoint, dataclasses.asdict(settings), progress))
    stopped = state is not None and state.get("stopped")
    if start < settings.epochs and not stopped:
        ready.model.fit(
            train_data,
            validation_data=validation_data,
            epochs=settings.epochs,
            initial_epoch=start,
            # The sequence shuffles by (seed, epoch) itself; Keras's own
            # shuffling draws from Python's global generator, which a
            # resumed run cannot replay.
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
    return progress


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras's swap of the averaged weights into the model between epochs.

    First among the callbacks, so that the validation figures, the kept
    epoch (GrassProgress keeps its weights) and the checkpoint see the
    averaged weights; each epoch trains on from the weights of its last
    step. A checkpoint holds the averaged weights as the model's and the
    last step's in the average's place: the swap of a resumed run starts
    from there.
    """

    def __init__(self, resumed):
        super().__init__(swap_on_epoch=True)
        # Keras (3.3 and later) has no public way to say where the averaged
        # weights are: its own flag tells the swap of the first epoch.
        self._ema_weights_in_model = resumed

    def _finalize_ema_values(self):
        # Keras copies the average into its own slot after the last epoch,
        # for fit's end to put it back into the model. Under JAX the two
        # variables then share one buffer, which the validation figures'
        # predict consumes ("Array has been deleted"). The bundle takes the
        # kept epoch's weights from GrassProgress instead, and a checkpoint
        # of the last epoch stays one to resume from.
        pass


def train(dataset, settings=None, checkpoint=None, resume=False):
    """Train a network on a dataset folder; return the model and bundle metadata.

    `settings`: a TrainingSettings, or a dict of the fields that differ
    from its defaults. `checkpoint` is a folder for the per-epoch
    checkpoint; with `resume`, training goes on from it.
    """
    settings = TrainingSettings.of(settings)
    settings = dataclasses.replace(
        settings, precision=training_precision(settings.precision)
    )
    state = None
    if resume:
        state = resumable_state(checkpoint, dataclasses.asdict(settings))
    ready = prepare(dataset, settings)
    transform = input_transform(ready, settings)
    class_weights = class_weights_for(
        settings.class_weight,
        ready.data_meta.classes,
        ready.data_meta.counts["train"]["pixels_per_class"],
    )
    progress = fit(ready, settings, transform, class_weights, checkpoint, state)
    model = ready.model
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    if settings.precision != "float32":
        # Bundles hold a float32 network; i.ann.classify picks its precision.
        model = with_precision(model, "float32")
    receptive = receptive_field(model, len(ready.band_indices), ready.multiple)
    metadata = bundle_metadata(
        dataset, settings, ready, progress, class_weights, transform, receptive
    )
    metadata.decision = decision_rule(
        model,
        ready.data_meta.classes,
        ready.arrays,
        None if ready.all_bands else ready.band_indices,
        transform,
        settings,
    )
    return model, metadata


def bundle_metadata(
    dataset, settings, ready, progress, class_weights, transform, receptive
):
    """The metadata.json of a bundle.

    `transform` is the (mean, std) of the inputs, `receptive` the receptive
    field and how it was found (nn/receptive_field.py).
    """
    data_meta = ready.data_meta
    history = progress.history
    mean, std = transform
    field, how = receptive
    architecture = ready.architecture
    if settings.pretrained and is_custom(architecture):
        architecture = ready.pretrained_meta.architecture
    epochs_run = len(history.get("loss", []))
    return BundleMetadata(
        created=datetime.datetime.now().isoformat(timespec="seconds"),
        architecture=architecture,
        architecture_file=(
            os.path.abspath(ready.architecture)
            if is_custom(ready.architecture)
            else None
        ),
        parameters=ready.params,
        size_multiple=ready.multiple,
        bands=[data_meta.bands[i] for i in ready.band_indices],
        classes=data_meta.classes,
        normalisation={
            "method": "standardise",
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
        dataset_statistics=data_meta.statistics,
        patch_size=data_meta.patch_size,
        receptive_field=field,
        receptive_field_method=how,
        margin=tiling_margin(field, ready.multiple),
        training={
            "epochs_requested": settings.epochs,
            "epochs_run": epochs_run,
            "best_epoch": progress.best_epoch,
            "monitor": progress.monitor,
            "stopped_early": epochs_run < settings.epochs,
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "schedule": settings.schedule,
            "optimizer": settings.optimizer,
            "loss": settings.loss,
            "focal_gamma": settings.gamma if settings.loss == "focal" else None,
            "class_weight": settings.class_weight,
            "class_weights": class_weights.tolist(),
            "augment": settings.augment,
            "ema": settings.ema,
            "patience": settings.patience,
            "seed": settings.seed,
            "precision": settings.precision,
            "pretrained": settings.pretrained,
            "layers_copied": ready.copied,
            "frozen": settings.freeze,
            "epoch_seconds": progress.epoch_seconds,
            "history": history,
            "device": training_device(),
        },
        dataset={
            "path": dataset,
            "reference": data_meta.reference,
            "region": data_meta.region,
            "projection": data_meta.projection,
            "sampling": {k: v for k, v in data_meta.sampling.items() if k != "origins"},
            "counts": data_meta.counts,
            "software": data_meta.software,
        },
        software={
            "i.ann": __version__,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "numpy": np.__version__,
        },
    )


def checkpoint_folder(output, resume):
    """The checkpoint folder of a bundle folder, emptied unless `resume`."""
    checkpoint = output.rstrip(os.sep) + ".checkpoint"
    if not resume and os.path.isdir(checkpoint):
        gs.warning(
            _(
                "Starting afresh: the checkpoint <{}> of an earlier run is "
                "replaced (use -r to resume it)"
            ).format(checkpoint)
        )
        shutil.rmtree(checkpoint)
    return checkpoint
