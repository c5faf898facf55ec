"""Fully convolutional networks for land-cover mapping, built with Keras 3.

One builder per architecture, each made of small layer-building functions,
in the manner of the keras.io examples. Everything is backend-neutral
(keras.layers and keras.ops only), so the models run under TensorFlow, JAX
or PyTorch.
"""

import numpy as np

import keras
from keras import layers


def dilated_block(x, filters, kernel_size, padding, name):
    """Dilated convolution, ReLU, batch norm and a stride-1 max pooling.

    The zero padding keeps the spatial size, so the network is fully
    convolutional and its output has the input's size.
    """
    x = layers.ZeroPadding2D(padding, name=name + "_pad")(x)
    x = layers.Conv2D(
        filters, kernel_size, dilation_rate=2, padding="valid", name=name + "_conv"
    )(x)
    x = layers.ReLU(name=name + "_relu")(x)
    x = layers.BatchNormalization(name=name + "_bn")(x)
    x = layers.ZeroPadding2D(1, name=name + "_poolpad")(x)
    return layers.MaxPooling2D(3, strides=1, name=name + "_pool")(x)


def classifier_head(x, n_classes):
    """1x1 convolution to class scores and a softmax over classes."""
    x = layers.Conv2D(n_classes, 1, name="head_conv")(x)
    return layers.Softmax(axis=-1, name="head_softmax")(x)


def build_fcn(input_shape, n_classes, filters=64):
    """The dilated dense FCN of Mboga et al. (2019, Remote Sensing 11, 597).

    Two 5x5 blocks then five 3x3 blocks, all dilated by 2; the outputs of
    all seven blocks are concatenated before the classifier, so the head
    sees features at every scale of context.
    """
    inputs = keras.Input(shape=(None, None, input_shape[-1]), name="bands")
    x0 = dilated_block(inputs, filters, 5, 4, "block1a")
    x1 = dilated_block(x0, filters, 5, 4, "block1b")
    features = [x0, x1]
    for i in range(5):
        features.append(dilated_block(features[-1], filters, 3, 2, f"block2{i}"))
    x = layers.Concatenate(axis=-1, name="concat")(features)
    outputs = classifier_head(x, n_classes)
    return keras.Model(inputs, outputs, name="fcn")


ARCHITECTURES = {"fcn": build_fcn}


def build_model(architecture, input_shape, n_classes, **params):
    """Build a model by architecture name."""
    return ARCHITECTURES[architecture](input_shape, n_classes, **params)


def _probe(model, size, n_bands, seed):
    """Output cells changed by a change of the centre input cell."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, size, size, n_bands)).astype("float32")
    changed = np.zeros((size, size), dtype=bool)
    reference = model.predict_on_batch(base)
    for delta in (-1000.0, 1000.0):
        probe = base.copy()
        probe[0, size // 2, size // 2, :] += delta
        out = model.predict_on_batch(probe)
        changed |= np.abs(np.asarray(out) - np.asarray(reference)).max(axis=(0, 3)) > 0
    return changed


def receptive_field(model, n_bands, seed=0, max_size=1024):
    """Side in cells of the window of input cells one output cell depends on.

    Measured by perturbing the centre input cell with large values of both
    signs and finding which output cells change: the extent of that set is
    the receptive field of one output cell (the relation is symmetric for
    convolutions). The probe grows until the change stays off its edges.
    """
    size = 65
    while size <= max_size:
        changed = _probe(model, size, n_bands, seed)
        rows = np.flatnonzero(changed.any(axis=1))
        cols = np.flatnonzero(changed.any(axis=0))
        touches_edge = (
            rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1 or cols[-1] == size - 1
        )
        if not touches_edge:
            return int(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)
        size = size * 2 - 1
    return max_size
