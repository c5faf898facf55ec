"""Training a network on a patch dataset and packing the result as a bundle."""

import ctypes
import datetime
import time

import numpy as np

import grass.script as gs
import keras

from . import BUNDLE_FORMAT, FORMAT_VERSION, __version__
from .dataset import UNLABELLED, load_dataset
from .models import ARCHITECTURES, build_model, receptive_field
from .normalise import band_transform, standardise
from .prediction import dihedral


class PatchSequence(keras.utils.PyDataset):
    """Batches of standardised patches, integer labels and per-cell weights.

    Built with workers (threads) so that the next batches are prepared while
    the network trains on the current one.

    Unlabelled cells get weight 0, so neither the loss nor the weighted
    accuracy sees them. With `augment`, each patch gets one of the eight
    flips and 90-degree rotations, drawn afresh every time it is served.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        mean,
        std,
        class_weights,
        augment=False,
        shuffle=True,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.mean = mean
        self.std = std
        self.class_weights = np.asarray(class_weights, dtype=np.float32)
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(images))
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self):
        return int(np.ceil(len(self.order) / self.batch_size))

    def __getitem__(self, index):
        batch = np.sort(
            self.order[index * self.batch_size : (index + 1) * self.batch_size]
        )
        x = standardise(self.images[batch], self.mean, self.std)
        codes = np.asarray(self.labels[batch])
        labelled = codes != UNLABELLED
        y = np.where(labelled, codes, 0).astype(np.int32)
        w = np.where(labelled, self.class_weights[y], 0.0).astype(np.float32)
        if self.augment:
            x, y, w = self._augment(x, y, w, index)
        return x, y, w

    def _augment(self, x, y, w, index):
        # Seeded by batch and epoch, not by call order: worker threads may
        # build batches in any order, and a run must be repeatable.
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for i, k in enumerate(rng.integers(0, 8, size=len(x))):
            x[i], y[i], w[i] = (dihedral(a, k) for a in (x[i], y[i], w[i]))
        return x, y, w

    def on_epoch_end(self):
        self.epoch += 1
        if self.shuffle:
            self.rng.shuffle(self.order)


class GrassProgress(keras.callbacks.Callback):
    """One GRASS message per epoch, gs.percent over epochs, best weights kept."""

    def __init__(self, epochs, monitor):
        super().__init__()
        self.epochs = epochs
        self.monitor = monitor
        self.best = np.inf
        self.best_epoch = None
        self.best_weights = None
        self.epoch_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self.started
        self.epoch_seconds.append(seconds)
        parts = [
            "{}={:.4f}".format(key, logs[key])
            for key in ("loss", "accuracy", "val_loss", "val_accuracy")
            if key in logs
        ]
        gs.message(
            _("Epoch {}/{}: {} ({:.1f} s)").format(
                epoch + 1, self.epochs, " ".join(parts), seconds
            )
        )
        gs.percent(epoch + 1, self.epochs, 1)
        value = logs.get(self.monitor)
        if value is not None and value < self.best:
            self.best = float(value)
            self.best_epoch = epoch + 1
            self.best_weights = self.model.get_weights()


class MallocTuning(keras.callbacks.Callback):
    """Undo TensorFlow's malloc setting that doubles the training time.

    When Keras feeds a PyDataset to TensorFlow (through a generator
    dataset), TensorFlow sets glibc's M_TRIM_THRESHOLD, which freezes the
    mmap threshold at 128 KiB: every batch-sized buffer is then mmap'ed and
    unmapped again, and on a 2-core machine half the time went to the
    kernel (measured: 35 s per epoch instead of 17 s). Raising both
    thresholds again restores ordinary heap reuse. Harmless elsewhere.
    """

    M_TRIM_THRESHOLD = -1
    M_MMAP_THRESHOLD = -3

    def __init__(self):
        super().__init__()
        try:
            self.libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self.libc = None

    def _tune(self):
        if self.libc is not None:
            self.libc.mallopt(self.M_TRIM_THRESHOLD, 1 << 30)
            self.libc.mallopt(self.M_MMAP_THRESHOLD, 1 << 25)

    def on_epoch_begin(self, epoch, logs=None):
        self._tune()

    def on_test_begin(self, logs=None):
        self._tune()


def training_device():
    """The device the Keras backend trains on, in words."""
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # noqa: BLE001 - some backends cannot list devices
        devices = []
    gpus = [d for d in devices if "gpu" in str(d).lower() or "cuda" in str(d).lower()]
    backend = keras.backend.backend()
    if gpus:
        return "{} backend on {}".format(backend, ", ".join(str(g) for g in gpus))
    return "{} backend on CPU".format(backend)


def train(
    dataset,
    architecture="fcn",
    epochs=10,
    batch_size=32,
    learning_rate=1e-3,
    seed=1,
    filters=64,
):
    """Train a network on a dataset folder; return the model and bundle metadata."""
    data_meta, arrays = load_dataset(dataset)
    keras.utils.set_random_seed(seed)
    n_bands = len(data_meta["bands"])
    n_classes = len(data_meta["classes"])
    mean, std = band_transform(data_meta["statistics"])
    class_weights = np.ones(n_classes, dtype=np.float32)
    params = {"filters": filters}
    model = build_model(architecture, (None, None, n_bands), n_classes, **params)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        weighted_metrics=["accuracy"],
    )
    train_data = PatchSequence(
        arrays["train_images"],
        arrays["train_labels"],
        batch_size,
        mean,
        std,
        class_weights,
        shuffle=True,
        seed=seed,
        workers=2,
    )
    has_validation = len(arrays["validation_images"]) > 0
    validation_data = None
    if has_validation:
        validation_data = PatchSequence(
            arrays["validation_images"],
            arrays["validation_labels"],
            batch_size,
            mean,
            std,
            class_weights,
            shuffle=False,
            workers=2,
        )
    gs.message(
        _("Training <{}> on {} patches ({} for validation), {}").format(
            architecture,
            len(arrays["train_images"]),
            len(arrays["validation_images"]),
            training_device(),
        )
    )
    progress = GrassProgress(epochs, "val_loss" if has_validation else "loss")
    history = model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        verbose=0,
        callbacks=[MallocTuning(), progress],
    )
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    field = receptive_field(model, n_bands)
    metadata = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "architecture": architecture,
        "parameters": params,
        "bands": data_meta["bands"],
        "classes": data_meta["classes"],
        "normalisation": {
            "method": "standardise",
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
        "dataset_statistics": data_meta["statistics"],
        "patch_size": data_meta["patch_size"],
        "receptive_field": field,
        "margin": field // 2,
        "training": {
            "epochs_requested": epochs,
            "epochs_run": len(history.history.get("loss", [])),
            "best_epoch": progress.best_epoch,
            "monitor": progress.monitor,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "seed": seed,
            "epoch_seconds": progress.epoch_seconds,
            "history": {
                k: [float(v) for v in vals] for k, vals in history.history.items()
            },
            "device": training_device(),
        },
        "dataset": {
            "path": dataset,
            "reference": data_meta["reference"],
            "region": data_meta["region"],
            "sampling": {
                k: v for k, v in data_meta["sampling"].items() if k != "origins"
            },
            "counts": data_meta["counts"],
            "software": data_meta["software"],
        },
        "software": {
            "i.ann": __version__,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
        },
    }
    return model, metadata


ARCHITECTURE_NAMES = sorted(ARCHITECTURES)
