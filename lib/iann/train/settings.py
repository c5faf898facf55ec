"""The settings of a training run, and the options they are parsed from.

Plain Python and NumPy (no GRASS session, no Keras), so that it can be
checked on its own.
"""

import dataclasses
import os

import numpy as np

from iann.errors import IannError


@dataclasses.dataclass
class TrainingSettings:
    """What to train and how: the options of i.ann.train, as values.

    The defaults are the module's (the `answer` of its options), so that a
    script calling the library trains as the module does; a test keeps
    them the same. Saved in checkpoints as a dict (dataclasses.asdict).
    """

    architecture: str = "fcn"
    filters: int = 32
    depth: int = 4
    params: dict = dataclasses.field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 0.001
    schedule: str = "constant"
    optimizer: str = "adam"
    loss: str = "crossentropy"
    gamma: float = 2.0
    class_weight: str = "none"
    augment: bool = True
    ema: float = 0.99
    patience: int = 0
    monitor: str = "val_loss"
    seed: int = 1
    bands: list = None
    pretrained: str = None
    freeze: list = None
    dataset_statistics: bool = False
    precision: str = "float32"
    decision: str = "argmax"
    decision_class: str = None
    decision_recall: float = 0.5
    # Reduced precisions made and checked after training (train/precision.py)
    inference_precision: list = None
    calibration_patches: int = 256

    @classmethod
    def of(cls, settings=None):
        """Settings from TrainingSettings, a dict of fields to change, or None."""
        if isinstance(settings, cls):
            return settings
        return cls(**(settings or {}))

    def changed(self):
        """The fields that differ from the defaults, as a dict."""
        default = type(self)()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
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
    """Per-class loss weights: `none`, `balanced`, `sqrt` or from a file.

    `balanced` weights each class by the inverse of its share of the
    labelled training cells (n / (K n_c), as scikit-learn), so that every
    class weighs the same in the loss; `sqrt` by the inverse square root of
    its share, a softer form that lifts rare classes without letting a few
    cells dominate. Both average 1 over the labelled cells; classes absent
    from training get 0. A file gives lines of `class_value weight`.
    """
    n_classes = len(classes)
    if method in (None, "", "none"):
        return np.ones(n_classes, dtype=np.float32)
    if method in ("balanced", "sqrt"):
        n = np.asarray(counts, dtype=np.float64)
        present = n > 0
        weights = np.zeros(n_classes)
        if method == "balanced":
            weights[present] = n.sum() / (present.sum() * n[present])
        else:
            weights[present] = n.sum() / (np.sqrt(n[present]) * np.sqrt(n).sum())
        return weights.astype(np.float32)
    return read_class_weight_file(method, classes)


def read_class_weight_file(path, classes):
    """Weights from a text file of lines `class_value weight`."""
    if not os.path.isfile(path):
        raise IannError(
            _("class_weight <{}> is neither none, balanced, sqrt nor a file").format(
                path
            )
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


def class_index(name, classes):
    """Index of the class named by its value or its label, or a clear error."""
    for index, record in enumerate(classes):
        if str(name).strip() in (str(record["value"]), str(record.get("label"))):
            return index
    raise IannError(
        _("Unknown class <{}>: the dataset's classes are {}").format(
            name,
            ", ".join(
                "{} ({})".format(c["value"], c.get("label") or "") for c in classes
            ),
        )
    )
