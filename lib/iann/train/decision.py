"""The decision rule of a bundle, learnt on a dataset's validation patches.

At the end of training (train/run.py), or for an existing bundle
(`i.ann.train decide=`): the network's probabilities on the labelled
validation cells, and the rule of predict/decision.py learnt from them.
"""

import numpy as np

import grass.script as gs

from iann.errors import IannError
from iann.formats.bundle import read_bundle_metadata, write_metadata
from iann.formats.dataset import UNLABELLED, load_dataset
from iann.nn.normalise import bundle_transform
from iann.predict.decision import MAXIMUM_CELLS, RULES, learn_rule
from iann.train.batches import PatchSequence
from iann.train.settings import class_index


def check_decision_settings(settings, classes):
    """Clear errors for decision options that cannot be learnt."""
    if settings.decision not in RULES:
        raise IannError(_("Unknown decision rule <{}>").format(settings.decision))
    if settings.decision in ("class_f1", "class_recall"):
        if not settings.decision_class:
            raise IannError(
                _("decision={} needs decision_class=").format(settings.decision)
            )
        class_index(settings.decision_class, classes)
    if not 0 < settings.decision_recall <= 1:
        raise IannError(
            _("decision_recall= must be above 0 and at most 1, not {}").format(
                settings.decision_recall
            )
        )


def validation_cells(model, arrays, band_indices, transform, batch_size):
    """Probabilities (cells, classes) and class indices of the labelled
    validation cells, every k-th of them beyond MAXIMUM_CELLS."""
    labels = arrays["validation_labels"]
    labelled = int(np.count_nonzero(np.asarray(labels) != UNLABELLED))
    step = max(1, -(-labelled // MAXIMUM_CELLS))
    mean, std = transform
    sequence = PatchSequence(
        arrays["validation_images"],
        labels,
        batch_size=batch_size,
        mean=mean,
        std=std,
        class_weights=np.ones(256, np.float32),
        band_indices=band_indices,
        shuffle=False,
    )
    probabilities, indices = [], []
    for index in range(len(sequence)):
        x = sequence[index][0]
        p = np.asarray(model.predict_on_batch(x), dtype=np.float32)
        start = index * batch_size
        codes = np.asarray(labels[start : start + len(x)])
        keep = codes != UNLABELLED
        probabilities.append(p[keep][::step])
        indices.append(codes[keep][::step].astype(np.int64))
    return np.concatenate(probabilities), np.concatenate(indices)


def decision_rule(model, classes, arrays, band_indices, transform, settings):
    """The rule of `settings.decision` learnt on the validation patches of
    `arrays` (a dict for the bundle's metadata), or None for argmax."""
    if settings.decision == "argmax":
        return None
    if not len(arrays["validation_images"]):
        gs.warning(
            _(
                "The dataset has no validation patches: decision={} cannot be "
                "learnt; the bundle's maps take the most probable class"
            ).format(settings.decision)
        )
        return None
    target = None
    if settings.decision in ("class_f1", "class_recall"):
        target = class_index(settings.decision_class, classes)
    probabilities, labels = validation_cells(
        model, arrays, band_indices, transform, settings.batch_size
    )
    rule = learn_rule(
        probabilities,
        labels,
        settings.decision,
        target,
        settings.decision_recall if settings.decision == "class_recall" else None,
    )
    before, after = rule["argmax"], rule["tuned"]
    gs.message(
        _(
            "Decision rule {}: class biases {}; validation macro F1 {:.3f} "
            "(argmax {:.3f}), overall accuracy {:.3f} (argmax {:.3f})"
        ).format(
            settings.decision,
            ", ".join(
                "{} {:+.2f}".format(c["value"], b)
                for c, b in zip(classes, rule["bias"])
            ),
            after["macro_f1"],
            before["macro_f1"],
            after["overall_accuracy"],
            before["overall_accuracy"],
        )
    )
    if rule.get("target_reached") is False:
        gs.warning(
            _(
                "Class <{}> does not reach a validation recall of {} with any "
                "bias tried (it has {} validation cells)"
            ).format(
                settings.decision_class,
                settings.decision_recall,
                rule["validation_cells_per_class"][target],
            )
        )
    return rule


def dataset_bands_of(bundle, metadata, data_meta, dataset):
    """Indices of the bundle's bands among the dataset's, or a clear error."""
    names = [b["name"] for b in data_meta.bands]
    indices = []
    for band in metadata.bands:
        if band["name"] not in names:
            raise IannError(
                _("Dataset <{}> has no band <{}> of bundle <{}>").format(
                    dataset, band["name"], bundle
                )
            )
        indices.append(names.index(band["name"]))
    bundle_values = [c["value"] for c in metadata.classes]
    if [c["value"] for c in data_meta.classes] != bundle_values:
        raise IannError(
            _("Dataset <{}> has other classes than bundle <{}> ({})").format(
                dataset, bundle, ", ".join(str(v) for v in bundle_values)
            )
        )
    return indices


def add_decision_rule(bundle, dataset, settings, overwrite):
    """Learn (or remove, with decision=argmax) the rule of an existing bundle
    on a dataset's validation patches; metadata.json is replaced in one step."""
    from iann.nn.saving import load_model

    metadata = read_bundle_metadata(bundle)
    if metadata.imported:
        raise IannError(
            _(
                "Bundle <{}> was imported: it has no model.keras to learn a rule with"
            ).format(bundle)
        )
    if metadata.decision and not overwrite:
        raise IannError(
            _(
                "Bundle <{}> has a decision rule already ({}); use --overwrite "
                "to replace it"
            ).format(bundle, metadata.decision["rule"])
        )
    data_meta, arrays = load_dataset(dataset)
    indices = dataset_bands_of(bundle, metadata, data_meta, dataset)
    check_decision_settings(settings, data_meta.classes)
    if settings.decision != "argmax" and not len(arrays["validation_images"]):
        raise IannError(
            _("Dataset <{}> has no validation patches to learn a rule on").format(
                dataset
            )
        )
    model = load_model(bundle, metadata)
    all_bands = indices == list(range(len(data_meta.bands)))
    metadata.decision = decision_rule(
        model,
        metadata.classes,
        arrays,
        None if all_bands else indices,
        bundle_transform(metadata),
        settings,
    )
    write_metadata(bundle, metadata)
    return metadata
