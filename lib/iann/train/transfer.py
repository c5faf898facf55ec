"""Fine-tuning: a pretrained bundle's network and weights as a starting point."""

import fnmatch
import os

import numpy as np

from iann.errors import IannError
from iann.formats.bundle import CUSTOM_ARCHITECTURE
from iann.nn.architectures import is_custom


def pretrained_architecture(folder, metadata):
    """Architecture name (or the bundle's copy of a custom file) and parameters."""
    architecture = metadata.architecture
    if is_custom(architecture):
        architecture = os.path.join(folder, CUSTOM_ARCHITECTURE)
    return architecture, dict(metadata.parameters)


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
    freeze_layers(model, freeze, copied)
    return copied


def freeze_layers(model, patterns, copied):
    """Keep the layers named by `patterns` (or `copied`) fixed in training."""
    for pattern in patterns or []:
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
