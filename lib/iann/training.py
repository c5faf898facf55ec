"""Training a network on a patch dataset and packing the result as a bundle."""

import contextlib
import ctypes
import datetime
import fnmatch
import json
import os
import shutil
import time
import warnings

import numpy as np

import grass.script as gs
import keras
from keras import ops

from . import BUNDLE_FORMAT, FORMAT_VERSION, __version__
from .bundle import CUSTOM_ARCHITECTURE, load_bundle
from .dataset import UNLABELLED, load_dataset
from .errors import IannError
from .models import (
    ARCHITECTURES,
    build_model,
    check_output_shape,
    is_custom,
    receptive_field,
    size_multiple,
    tiling_margin,
    with_precision,
)
from .normalise import band_transform, bundle_transform, standardise
from .augmentation import dihedral

LOSSES = ("crossentropy", "focal")
DEFAULT_FILTERS = {"fcn": 32, "unet": 32, "resunet": 32}
DEFAULTS = {
    "architecture": "fcn",
    "filters": None,
    "depth": 4,
    "params": {},
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "loss": "crossentropy",
    "gamma": 2.0,
    "class_weight": "none",
    "augment": True,
    "patience": 0,
    "seed": 1,
    "bands": None,
    "pretrained": None,
    "freeze": None,
    "dataset_statistics": False,
    "precision": "float32",
}


def parse_params(text):
    """`key=value,...` as a dict; numbers and true/false are converted."""
    params = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise IannError(
                _("Parameter <{}> is not of the form key=value").format(item)
            )
        params[key.strip()] = _parse_value(value.strip())
    return params


def _parse_value(value):
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def select_bands(requested, bands):
    """Indices of the requested bands (names, with or without @mapset, or 1..N)."""
    if not requested:
        return list(range(len(bands)))
    names = [b["name"] for b in bands]
    indices = []
    for item in requested:
        matches = [
            i
            for i, name in enumerate(names)
            if item in (name, name.split("@")[0], str(i + 1))
        ]
        if not matches:
            raise IannError(
                _("The dataset has no band <{}>; its bands are: {}").format(
                    item, ", ".join(names)
                )
            )
        indices.append(matches[0])
    if len(set(indices)) != len(indices):
        raise IannError(_("A band is named twice in bands="))
    return indices


def class_weights_for(method, classes, counts):
    """Per-class loss weights: `none`, `balanced` or from a file of value weight.

    `balanced` weights each class by the inverse of its share of the
    labelled training cells (n / (K n_c), as scikit-learn), so that every
    class weighs the same in the loss; classes absent from training get 0.
    """
    n_classes = len(classes)
    if method in (None, "", "none"):
        return np.ones(n_classes, dtype=np.float32)
    if method == "balanced":
        n = np.asarray(counts, dtype=np.float64)
        present = n > 0
        weights = np.zeros(n_classes)
        weights[present] = n.sum() / (present.sum() * n[present])
        return weights.astype(np.float32)
    return read_class_weight_file(method, classes)


def read_class_weight_file(path, classes):
    """Weights from a text file of lines `class_value weight`."""
    if not os.path.isfile(path):
        raise IannError(
            _("class_weight <{}> is neither none, balanced nor a file").format(path)
        )
    given = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.replace(",", " ").replace("=", " ").split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                value, weight = int(fields[0]), float(fields[1])
            except (ValueError, IndexError):
                raise IannError(
                    _(
                        "Class weight file <{}>, line {}: expected 'value weight'"
                    ).format(path, number)
                )
            if weight < 0:
                raise IannError(
                    _("Class weight file <{}>, line {}: negative weight").format(
                        path, number
                    )
                )
            given[value] = weight
    missing = [c["value"] for c in classes if c["value"] not in given]
    if missing:
        raise IannError(
            _("Class weight file <{}> has no weight for class {}").format(
                path, ", ".join(str(v) for v in missing)
            )
        )
    return np.array([given[c["value"]] for c in classes], dtype=np.float32)


class SparseFocalLoss(keras.losses.Loss):
    """Focal loss (Lin et al. 2017) on integer labels: -(1 - p_t)^gamma log p_t.

    Down-weights cells the network already gets right, so that the rare and
    hard classes weigh more in the gradient.
    """

    def __init__(self, gamma=2.0, name="sparse_focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma = gamma

    def call(self, y_true, y_pred):
        n_classes = ops.shape(y_pred)[-1]
        one_hot = ops.one_hot(ops.cast(y_true, "int32"), n_classes)
        p_true = ops.sum(one_hot * y_pred, axis=-1)
        p_true = ops.clip(p_true, keras.config.epsilon(), 1.0)
        return -ops.power(1.0 - p_true, self.gamma) * ops.log(p_true)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


def make_loss(name, gamma):
    if name == "focal":
        return SparseFocalLoss(gamma=gamma)
    return keras.losses.SparseCategoricalCrossentropy()


class PatchSequence(keras.utils.PyDataset):
    """Batches of standardised patches, integer labels and per-cell weights.

    Built with workers (threads) so that the next batches are prepared while
    the network trains on the current one.

    Unlabelled cells get weight 0, so neither the loss nor the weighted
    accuracy sees them. The order of the patches in an epoch and, with
    `augment`, the flip or 90-degree rotation each patch gets are drawn from
    (seed, epoch, batch): a run is repeatable, and a resumed run sees the
    same batches as an uninterrupted one.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        mean,
        std,
        class_weights,
        band_indices=None,
        augment=False,
        shuffle=True,
        seed=0,
        epoch=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.mean = mean
        self.std = std
        self.class_weights = np.asarray(class_weights, dtype=np.float32)
        self.band_indices = band_indices
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.set_epoch(epoch)

    def set_epoch(self, epoch):
        # Called by EpochOrder before Keras starts the epoch's workers; not
        # from on_epoch_end, which Keras also calls once before training.
        self.epoch = epoch
        self.order = np.arange(len(self.images))
        if self.shuffle:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(
                len(self.images)
            )

    def __len__(self):
        return int(np.ceil(len(self.order) / self.batch_size))

    def __getitem__(self, index):
        batch = np.sort(
            self.order[index * self.batch_size : (index + 1) * self.batch_size]
        )
        images = self.images[batch]
        if self.band_indices is not None:
            images = images[..., self.band_indices]
        x = standardise(images, self.mean, self.std)
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
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        for i, k in enumerate(rng.integers(0, 8, size=len(x))):
            x[i], y[i], w[i] = (dihedral(a, k) for a in (x[i], y[i], w[i]))
        return x, y, w


class EpochOrder(keras.callbacks.Callback):
    """Tells a PatchSequence which epoch begins (its order and augmentation)."""

    def __init__(self, sequence):
        super().__init__()
        self.sequence = sequence

    def on_epoch_begin(self, epoch, logs=None):
        self.sequence.set_epoch(epoch)


class GrassProgress(keras.callbacks.Callback):
    """Epoch messages, gs.percent, the best weights, early stopping.

    The state (history, best epoch, epochs without improvement) can be
    saved and restored, so that a resumed run continues the same way.
    """

    def __init__(self, epochs, monitor, patience=0, state=None):
        super().__init__()
        self.epochs = epochs
        self.monitor = monitor
        self.patience = patience
        state = state or {}
        self.best = state.get("best", np.inf)
        self.best_epoch = state.get("best_epoch")
        self.wait = state.get("wait", 0)
        self.history = state.get("history", {})
        self.epoch_seconds = state.get("epoch_seconds", [])
        self.stopped_early = False
        self.best_weights = None

    def state(self):
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "history": self.history,
            "epoch_seconds": self.epoch_seconds,
        }

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self.started
        self.epoch_seconds.append(seconds)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
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
            self.wait = 0
        else:
            self.wait += 1
            if self.patience and self.wait >= self.patience:
                gs.message(
                    _("Stopping: {} has not improved for {} epochs").format(
                        self.monitor, self.wait
                    )
                )
                self.stopped_early = True
                self.model.stop_training = True


class Checkpoint(keras.callbacks.Callback):
    """Everything needed to resume, written after each epoch.

    Each epoch goes into a new sub-folder (weights, best weights, optimizer
    state), and state.json, replaced atomically last, names it: a run
    killed at any moment leaves a consistent checkpoint of its last
    finished epoch.
    """

    STATE = "state.json"

    def __init__(self, folder, settings, progress):
        super().__init__()
        self.folder = folder
        self.settings = settings
        self.progress = progress

    def on_epoch_end(self, epoch, logs=None):
        name = "epoch-{}".format(epoch + 1)
        target = os.path.join(self.folder, name)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        self.model.save_weights(os.path.join(target, "model.weights.h5"))
        if self.progress.best_epoch == epoch + 1:
            best = os.path.join(target, "best.weights.h5")
            self.model.save_weights(best)
        variables = [np.asarray(v) for v in self.model.optimizer.variables]
        np.savez(os.path.join(target, "optimizer.npz"), *variables)
        state = {
            "folder": name,
            "epochs_done": epoch + 1,
            "best_folder": "epoch-{}".format(self.progress.best_epoch),
            "stopped": bool(self.model.stop_training),
            "settings": self.settings,
            "progress": self.progress.state(),
        }
        temporary = os.path.join(self.folder, self.STATE + ".tmp")
        with open(temporary, "w") as f:
            json.dump(state, f)
        os.replace(temporary, os.path.join(self.folder, self.STATE))
        keep = {name, state["best_folder"]}
        for entry in os.listdir(self.folder):
            if entry.startswith("epoch-") and entry not in keep:
                shutil.rmtree(os.path.join(self.folder, entry), ignore_errors=True)


def read_checkpoint(folder):
    """The state of a checkpoint folder, or None when there is none."""
    try:
        with open(os.path.join(folder, Checkpoint.STATE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_weights_quietly(model, path):
    # The weights files hold no optimizer state (it is saved apart), which
    # Keras reports with a warning meant for other uses.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.load_weights(path)


def restore_checkpoint(model, folder, state):
    """Weights and optimizer state of the checkpoint's last epoch."""
    load_weights_quietly(
        model, os.path.join(folder, state["folder"], "model.weights.h5")
    )
    model.optimizer.build(model.trainable_variables)
    saved = np.load(os.path.join(folder, state["folder"], "optimizer.npz"))
    variables = model.optimizer.variables
    if len(saved.files) != len(variables):
        raise IannError(
            _("Checkpoint <{}> does not fit this model's optimizer").format(folder)
        )
    for i, variable in enumerate(variables):
        variable.assign(saved["arr_{}".format(i)])


def checkpoint_best_weights(model, folder, state):
    """Weights of the best epoch saved in a checkpoint, or None."""
    path = os.path.join(folder, state["best_folder"], "best.weights.h5")
    if not os.path.isfile(path):
        return None
    current = model.get_weights()
    load_weights_quietly(model, path)
    best = model.get_weights()
    model.set_weights(current)
    return best


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


def accelerators():
    """The GPUs the Keras backend sees."""
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # noqa: BLE001 - some backends cannot list devices
        devices = []
    return [d for d in devices if "gpu" in str(d).lower() or "cuda" in str(d).lower()]


def training_device():
    """The device the Keras backend trains on, in words."""
    gpus = accelerators()
    backend = keras.backend.backend()
    if gpus:
        return "{} backend on {}".format(backend, ", ".join(str(g) for g in gpus))
    return "{} backend on CPU".format(backend)


def data_parallel_scope():
    """Data parallelism over all GPUs of the machine, when there are several.

    JAX: Keras's own DataParallel distribution. TensorFlow: its
    MirroredStrategy, the way Keras documents multi-GPU training for that
    backend (the one place the library names TensorFlow; model and loss
    code stay backend-neutral). One device: nothing to do.
    """
    gpus = accelerators()
    if len(gpus) < 2:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if backend == "jax":
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=gpus)
        )
        return contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf  # only for its distribution strategy

        return tf.distribute.MirroredStrategy().scope()
    gs.warning(
        _("{} GPUs seen, but the {} backend trains on one").format(len(gpus), backend)
    )
    return contextlib.nullcontext()


def usable_precision(precision):
    """The precision to compute in: float16 only where a GPU is."""
    if precision == "mixed_float16" and not accelerators():
        gs.warning(
            _("precision=mixed_float16 needs a GPU; computing in float32 on the CPU")
        )
        return "float32"
    return precision


@contextlib.contextmanager
def precision_policy(precision):
    """Layers built inside compute in `precision` (a Keras dtype policy).

    Keras wraps the optimizer of a mixed_float16 model in its loss scaling
    at compile time; the softmax of the built-in heads stays float32.
    """
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def head_layer(model):
    """The classifier: the last layer with weights."""
    return [layer for layer in model.layers if layer.weights][-1]


def transfer_head(layer, source, old_values, new_values):
    """Copy the classifier's weights class by class, for the classes in both.

    The last axis of the kernel and bias runs over the classes; a class the
    pretrained model never saw keeps its fresh weights.
    """
    weights = [np.array(w) for w in layer.get_weights()]
    old = source.get_weights()
    if [w.shape[:-1] for w in weights] != [w.shape[:-1] for w in old]:
        return False
    shared = [
        (old_values.index(v), new_values.index(v))
        for v in new_values
        if v in old_values
    ]
    if not shared:
        return False
    for target, given in zip(weights, old):
        for i, j in shared:
            target[..., j] = given[..., i]
    layer.set_weights(weights)
    return True


def transfer_weights(model, pretrained, freeze, old_values=None, new_values=None):
    """Copy the pretrained model's weights into `model` where the layers fit.

    Layers are matched by name and shape. The classifier (the last layer
    with weights) is copied class by class, matched by class value, so a
    fine-tuned model starts from what the pretrained one knew of each class
    it keeps; new classes start afresh. `freeze` lists layer names or
    patterns to keep fixed, or `copied` for every layer whose weights were
    copied. Returns the copied layer names.
    """
    copied = []
    head = head_layer(model)
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            source = pretrained.get_layer(layer.name)
        except ValueError:
            continue
        if layer is head and old_values is not None and old_values != new_values:
            if transfer_head(layer, source, old_values, new_values):
                copied.append(layer.name)
            continue
        weights = source.get_weights()
        shapes = [w.shape for w in weights]
        if shapes == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(weights)
            copied.append(layer.name)
    for pattern in freeze or []:
        if pattern == "copied":
            matched = copied
        else:
            matched = [
                layer.name
                for layer in model.layers
                if fnmatch.fnmatchcase(layer.name, pattern)
            ]
        if not matched:
            raise IannError(
                _("freeze: no layer matches <{}>; the layers are: {}").format(
                    pattern, ", ".join(layer.name for layer in model.layers)
                )
            )
        for name in matched:
            model.get_layer(name).trainable = False
    return copied


def pretrained_architecture(folder, metadata):
    """Architecture name (or the bundle's copy of a custom file) and parameters."""
    architecture = metadata["architecture"]
    if is_custom(architecture):
        architecture = os.path.join(folder, CUSTOM_ARCHITECTURE)
    return architecture, dict(metadata["parameters"])


def model_settings(settings):
    """Architecture and its parameters from the settings."""
    architecture = settings["architecture"]
    params = dict(settings["params"])
    if not is_custom(architecture):
        filters = settings["filters"] or DEFAULT_FILTERS[architecture]
        params.setdefault("filters", filters)
        if architecture in ("unet", "resunet"):
            params.setdefault("depth", settings["depth"])
    return architecture, params


def prepare(dataset, settings):
    """Everything checked and built before training starts.

    Returns the dataset's metadata and arrays, the chosen bands, the model
    (with pretrained weights copied and layers frozen), its architecture,
    parameters and size multiple, and the pretrained bundle's metadata.
    """
    data_meta, arrays = load_dataset(dataset)
    band_indices = select_bands(settings["bands"], data_meta["bands"])
    n_bands = len(band_indices)
    n_classes = len(data_meta["classes"])
    patch_size = int(data_meta["patch_size"])
    if settings["loss"] not in LOSSES:
        raise IannError(_("Unknown loss <{}>").format(settings["loss"]))
    pretrained_meta = pretrained_model = None
    if settings["pretrained"]:
        pretrained_meta, pretrained_model = load_bundle(settings["pretrained"])
        if len(pretrained_meta["bands"]) != n_bands:
            raise IannError(
                _(
                    "Pretrained model <{}> takes {} bands, the training data has {}"
                ).format(settings["pretrained"], len(pretrained_meta["bands"]), n_bands)
            )
        architecture, params = pretrained_architecture(
            settings["pretrained"], pretrained_meta
        )
        asked = {
            key: settings[key]
            for key in ("architecture", "filters", "params")
            if settings[key] != DEFAULTS[key]
        }
        if asked:
            gs.warning(
                _("The network of <{}> is used as it is; ignored: {}").format(
                    settings["pretrained"],
                    ", ".join("{}={}".format(k, v) for k, v in asked.items()),
                )
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
    keras.utils.set_random_seed(settings["seed"])
    with data_parallel_scope(), precision_policy(settings["precision"]):
        model = build_model(architecture, (None, None, n_bands), n_classes, **params)
        check_output_shape(model, architecture, patch_size, n_bands, n_classes)
        copied = []
        if pretrained_model is not None:
            copied = transfer_weights(
                model,
                pretrained_model,
                settings["freeze"],
                [c["value"] for c in pretrained_meta["classes"]],
                [c["value"] for c in data_meta["classes"]],
            )
        elif settings["freeze"]:
            raise IannError(_("freeze= needs a pretrained= model"))
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=settings["learning_rate"]),
            loss=make_loss(settings["loss"], settings["gamma"]),
            weighted_metrics=["accuracy"],
        )
    return {
        "data_meta": data_meta,
        "arrays": arrays,
        "band_indices": band_indices,
        "model": model,
        "architecture": architecture,
        "params": params,
        "multiple": multiple,
        "pretrained_meta": pretrained_meta,
        "copied": copied,
    }


def train(dataset, settings=None, checkpoint=None, resume=False):
    """Train a network on a dataset folder; return the model and bundle metadata.

    `settings` overrides DEFAULTS. `checkpoint` is a folder for the
    per-epoch checkpoint; with `resume`, training goes on from it.
    """
    settings = {**DEFAULTS, **(settings or {})}
    settings["precision"] = usable_precision(settings["precision"])
    state = None
    if resume:
        state = read_checkpoint(checkpoint) if checkpoint else None
        if state is None:
            raise IannError(
                _("There is no checkpoint <{}> to resume from").format(checkpoint)
            )
        changed = [
            key
            for key in settings
            if key != "epochs" and state["settings"].get(key) != settings[key]
        ]
        if changed:
            raise IannError(
                _(
                    "Checkpoint <{}> was made with other settings ({}); resume "
                    "with the same settings or start again without -r"
                ).format(checkpoint, ", ".join(changed))
            )
    ready = prepare(dataset, settings)
    model, data_meta, arrays = ready["model"], ready["data_meta"], ready["arrays"]
    band_indices = ready["band_indices"]
    all_bands = band_indices == list(range(len(data_meta["bands"])))
    mean, std = band_transform(data_meta["statistics"], band_indices)
    if ready["pretrained_meta"] is not None and not settings["dataset_statistics"]:
        # The copied weights expect the inputs scaled as in their training.
        mean, std = bundle_transform(ready["pretrained_meta"])
    counts = data_meta["counts"]["train"]["pixels_per_class"]
    class_weights = class_weights_for(
        settings["class_weight"], data_meta["classes"], counts
    )
    start = 0
    has_validation = len(arrays["validation_images"]) > 0
    monitor = "val_loss" if has_validation else "loss"
    progress = GrassProgress(
        settings["epochs"],
        monitor,
        settings["patience"],
        state["progress"] if state is not None else None,
    )
    if state is not None:
        restore_checkpoint(model, checkpoint, state)
        progress.best_weights = checkpoint_best_weights(model, checkpoint, state)
        start = state["epochs_done"]
        gs.message(
            _("Resuming from epoch {} of checkpoint <{}>").format(start, checkpoint)
        )
    sequence_options = {
        "batch_size": settings["batch_size"],
        "mean": mean,
        "std": std,
        "class_weights": class_weights,
        "band_indices": None if all_bands else band_indices,
        "seed": settings["seed"],
        "workers": 2,
    }
    train_data = PatchSequence(
        arrays["train_images"],
        arrays["train_labels"],
        augment=settings["augment"],
        shuffle=True,
        epoch=start,
        **sequence_options,
    )
    validation_data = None
    if has_validation:
        validation_data = PatchSequence(
            arrays["validation_images"],
            arrays["validation_labels"],
            shuffle=False,
            **sequence_options,
        )
    gs.message(
        _("Training <{}> on {} patches ({} for validation), {}").format(
            os.path.basename(ready["architecture"]),
            len(arrays["train_images"]),
            len(arrays["validation_images"]),
            training_device(),
        )
    )
    if ready["copied"]:
        gs.verbose(
            _("Weights of {} layers taken from <{}>").format(
                len(ready["copied"]), settings["pretrained"]
            )
        )
    callbacks = [EpochOrder(train_data), MallocTuning(), progress]
    if checkpoint:
        os.makedirs(checkpoint, exist_ok=True)
        callbacks.append(Checkpoint(checkpoint, settings, progress))
    stopped = state is not None and state.get("stopped")
    if start < settings["epochs"] and not stopped:
        model.fit(
            train_data,
            validation_data=validation_data,
            epochs=settings["epochs"],
            initial_epoch=start,
            # The sequence shuffles by (seed, epoch) itself; Keras's own
            # shuffling draws from Python's global generator, which a
            # resumed run cannot replay.
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    if settings["precision"] != "float32":
        # Bundles hold a float32 network; i.ann.classify picks its precision.
        model = with_precision(model, "float32")
    field, how = receptive_field(model, len(band_indices), ready["multiple"])
    metadata = bundle_metadata(
        dataset, settings, ready, progress, class_weights, mean, std, field, how
    )
    return model, metadata


def bundle_metadata(
    dataset, settings, ready, progress, class_weights, mean, std, field, how
):
    """The metadata.json of a bundle."""
    data_meta = ready["data_meta"]
    history = progress.history
    architecture = ready["architecture"]
    if settings["pretrained"] and is_custom(architecture):
        architecture = ready["pretrained_meta"]["architecture"]
    return {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "architecture": architecture,
        "architecture_file": (
            os.path.abspath(ready["architecture"])
            if is_custom(ready["architecture"])
            else None
        ),
        "parameters": ready["params"],
        "size_multiple": ready["multiple"],
        "bands": [data_meta["bands"][i] for i in ready["band_indices"]],
        "classes": data_meta["classes"],
        "normalisation": {
            "method": "standardise",
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
        "dataset_statistics": data_meta["statistics"],
        "patch_size": data_meta["patch_size"],
        "receptive_field": field,
        "receptive_field_method": how,
        "margin": tiling_margin(field, ready["multiple"]),
        "training": {
            "epochs_requested": settings["epochs"],
            "epochs_run": len(history.get("loss", [])),
            "best_epoch": progress.best_epoch,
            "monitor": progress.monitor,
            "stopped_early": len(history.get("loss", [])) < settings["epochs"],
            "batch_size": settings["batch_size"],
            "learning_rate": settings["learning_rate"],
            "loss": settings["loss"],
            "focal_gamma": settings["gamma"] if settings["loss"] == "focal" else None,
            "class_weight": settings["class_weight"],
            "class_weights": class_weights.tolist(),
            "augment": settings["augment"],
            "patience": settings["patience"],
            "seed": settings["seed"],
            "precision": settings["precision"],
            "pretrained": settings["pretrained"],
            "layers_copied": ready["copied"],
            "frozen": settings["freeze"],
            "epoch_seconds": progress.epoch_seconds,
            "history": history,
            "device": training_device(),
        },
        "dataset": {
            "path": dataset,
            "reference": data_meta["reference"],
            "region": data_meta["region"],
            "projection": data_meta.get("projection", ""),
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
            "numpy": np.__version__,
        },
    }


def plot_history(history, path, title=None):
    """Loss and accuracy curves per epoch (training and validation) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for axis, key, label in (
        (axes[0], "loss", "Loss"),
        (axes[1], "accuracy", "Accuracy"),
    ):
        for prefix, name in (("", "training"), ("val_", "validation")):
            if prefix + key in history:
                axis.plot(epochs, history[prefix + key], marker="o", label=name)
        axis.set_xlabel("Epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


ARCHITECTURE_NAMES = sorted(ARCHITECTURES)
