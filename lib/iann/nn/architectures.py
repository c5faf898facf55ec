"""Fully convolutional networks for land-cover mapping, built with Keras 3.

One builder per architecture, each made of small layer-building functions,
in the manner of the keras.io examples. Everything is backend-neutral
(keras.layers and keras.ops only), so the models run under TensorFlow, JAX
or PyTorch.

A user's own architecture is a Python file defining
`build_model(input_shape, n_classes, **params)` that returns a Keras model
mapping (rows, cols, bands) to (rows, cols, n_classes) class probabilities.

The context an output cell depends on is in receptive_field.py.
"""

import importlib.machinery
import importlib.util
import os

import numpy as np

import keras
from keras import layers

from iann.errors import IannError


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
    """1x1 convolution to class scores and a softmax over classes.

    The softmax computes in float32 whatever the precision policy, so that
    mixed-precision networks give float32 probabilities and losses.
    """
    x = layers.Conv2D(n_classes, 1, name="head_conv")(x)
    return layers.Softmax(axis=-1, name="head_softmax", dtype="float32")(x)


def fcn_features(inputs, filters):
    """The seven dilated blocks of the fcn; every block's output, in order."""
    x0 = dilated_block(inputs, filters, 5, 4, "block1a")
    x1 = dilated_block(x0, filters, 5, 4, "block1b")
    features = [x0, x1]
    for i in range(5):
        features.append(dilated_block(features[-1], filters, 3, 2, f"block2{i}"))
    return features


def build_fcn(input_shape, n_classes, filters=32):
    """The dilated dense FCN of Mboga et al. (2019, Remote Sensing 11, 597).

    Two 5x5 blocks then five 3x3 blocks, all dilated by 2; the outputs of
    all seven blocks are concatenated before the classifier, so the head
    sees features at every scale of context.
    """
    inputs = keras.Input(shape=(None, None, input_shape[-1]), name="bands")
    features = fcn_features(inputs, filters)
    x = layers.Concatenate(axis=-1, name="concat")(features)
    outputs = classifier_head(x, n_classes)
    return keras.Model(inputs, outputs, name="fcn")


def fcn_for_prediction(model):
    """The trained fcn with its classifier split over the blocks, or None.

    A 1x1 convolution of the concatenated block outputs is the sum of 1x1
    convolutions of each block's output with its slice of the kernel. Added
    up as the blocks are computed, each block's output can be freed once
    the next block has read it, instead of all seven being held for the
    concatenation: a third of the peak memory for a 1074-cell tile, so larger tiles
    (less margin recomputed) fit in the same memory. The same weights give
    the same probabilities (checked on a probe); None when `model` is not
    the fcn of build_fcn.
    """
    try:
        head = model.get_layer("head_conv")
        filters = model.get_layer("block1a_conv").filters
        kernel, bias = head.get_weights()
    except ValueError:
        return None
    n_bands, n_classes = model.input_shape[-1], head.filters
    if kernel.shape != (1, 1, 7 * filters, n_classes):
        return None
    inputs = keras.Input(shape=(None, None, n_bands), name="bands")
    scores, head_parts = None, []
    for i, block in enumerate(fcn_features(inputs, filters)):
        head_parts.append(
            layers.Conv2D(n_classes, 1, use_bias=i == 0, name=f"head_conv_part{i}")
        )
        part = head_parts[-1](block)
        scores = part if scores is None else layers.Add()([scores, part])
    outputs = layers.Softmax(axis=-1, name="head_softmax", dtype="float32")(scores)
    lean = keras.Model(inputs, outputs, name="fcn_for_prediction")
    for i, layer in enumerate(head_parts):
        part = kernel[:, :, i * filters : (i + 1) * filters]
        layer.set_weights([part, bias] if i == 0 else [part])
    for layer in lean.layers:
        if layer.weights and layer not in head_parts:
            try:
                layer.set_weights(model.get_layer(layer.name).get_weights())
            except ValueError:
                return None
    probe = np.random.default_rng(0).normal(size=(1, 48, 48, n_bands))
    probe = probe.astype("float32")
    expected = np.asarray(model.predict_on_batch(probe))
    if not np.allclose(np.asarray(lean.predict_on_batch(probe)), expected, atol=1e-5):
        return None
    return lean


def with_precision(model, precision):
    """A copy of `model` whose layers compute in a mixed-precision policy.

    `precision` is a Keras policy name (mixed_bfloat16, mixed_float16):
    weights stay float32, layers compute in 16 bits, softmax layers in
    float32 (probabilities keep their precision).
    """

    def clone(layer):
        config = layer.get_config()
        keep = isinstance(layer, layers.Softmax)
        config["dtype"] = "float32" if keep else precision
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def double_conv(x, filters, name):
    """Two 3x3 convolutions, each with batch norm and ReLU (one U-Net level)."""
    for i in (1, 2):
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}"
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(input_shape, n_classes, filters=32, depth=4):
    """U-Net (Ronneberger et al. 2015) with `depth` poolings.

    `filters` at the first level, doubled at each level down; transposed
    convolutions up, each joined with the encoder's features of its level.
    Rows and columns of the input must be multiples of 2**depth.
    """
    inputs = keras.Input(shape=(None, None, input_shape[-1]), name="bands")
    x, skips = inputs, []
    for level in range(depth):
        x = double_conv(x, filters * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = double_conv(x, filters * 2**depth, "bottom")
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(
            filters * 2**level, 2, strides=2, name=f"up{level}_upconv"
        )(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = double_conv(x, filters * 2**level, f"up{level}")
    outputs = classifier_head(x, n_classes)
    return keras.Model(inputs, outputs, name="unet")


def residual_unit(x, filters, strides, name):
    """Pre-activation residual unit (BN, ReLU, 3x3 conv, twice) with a shortcut."""
    shortcut = layers.Conv2D(
        filters, 1, strides=strides, padding="same", name=name + "_shortcut"
    )(x)
    shortcut = layers.BatchNormalization(name=name + "_shortcut_bn")(shortcut)
    y = x
    for i, step in ((1, strides), (2, 1)):
        y = layers.BatchNormalization(name=f"{name}_bn{i}")(y)
        y = layers.ReLU(name=f"{name}_relu{i}")(y)
        y = layers.Conv2D(
            filters, 3, strides=step, padding="same", name=f"{name}_conv{i}"
        )(y)
    return layers.Add(name=name + "_add")([shortcut, y])


def build_resunet(input_shape, n_classes, filters=32, depth=4):
    """Residual U-Net (Zhang, Liu and Wang 2018, IEEE GRSL 15, 749).

    A U-Net whose levels are pre-activation residual units, downsampling by
    strided convolution instead of pooling: it trains faster and deeper
    than the plain U-Net for the same filters. Rows and columns of the
    input must be multiples of 2**depth.
    """
    inputs = keras.Input(shape=(None, None, input_shape[-1]), name="bands")
    x = layers.Conv2D(filters, 3, padding="same", name="stem_conv")(inputs)
    x = residual_unit(x, filters, 1, "down0")
    skips = [x]
    for level in range(1, depth + 1):
        x = residual_unit(x, filters * 2**level, 2, f"down{level}")
        skips.append(x)
    x = skips.pop()
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = residual_unit(x, filters * 2**level, 1, f"up{level}")
    outputs = classifier_head(x, n_classes)
    return keras.Model(inputs, outputs, name="resunet")


ARCHITECTURES = {"fcn": build_fcn, "unet": build_unet, "resunet": build_resunet}


def size_multiple(architecture, params):
    """Rows and columns of an input must be multiples of this number."""
    if architecture in ("unet", "resunet"):
        return 2 ** int(params.get("depth", 4))
    return int(params.get("size_multiple", 1))


def is_custom(architecture):
    """Whether `architecture` names a user's Python file, not a built-in."""
    return architecture not in ARCHITECTURES


def load_custom_builder(path):
    """The build_model function of a user's architecture file."""
    if not os.path.isfile(path):
        raise IannError(
            _("Architecture <{}> is neither one of {} nor a Python file").format(
                path, ", ".join(sorted(ARCHITECTURES))
            )
        )
    # A file of Python source, whatever its name ends with.
    name = "iann_custom_architecture"
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - any error in the user's file
        raise IannError(
            _("Cannot load architecture file <{}>: {}: {}").format(
                path, type(error).__name__, error
            )
        )
    builder = getattr(module, "build_model", None)
    if not callable(builder):
        raise IannError(
            _(
                "Architecture file <{}> defines no function "
                "build_model(input_shape, n_classes, **params)"
            ).format(path)
        )
    return builder


def build_model(architecture, input_shape, n_classes, **params):
    """Build a model by architecture name or from a user's architecture file."""
    if not is_custom(architecture):
        builder = ARCHITECTURES[architecture]
    else:
        builder = load_custom_builder(architecture)
    params = {k: v for k, v in params.items() if k != "size_multiple"}
    try:
        model = builder(input_shape, n_classes, **params)
    except Exception as error:  # noqa: BLE001 - bad parameters or a bad file
        raise IannError(
            _("Cannot build architecture <{}> with parameters {}: {}: {}").format(
                architecture, params, type(error).__name__, error
            )
        )
    if not isinstance(model, keras.Model):
        raise IannError(
            _("Architecture <{}> returned {}, not a Keras model").format(
                architecture, type(model).__name__
            )
        )
    return model


def check_output_shape(model, architecture, patch_size, n_bands, n_classes):
    """Clear error unless a patch gives (patch_size, patch_size, n_classes)."""
    probe = np.zeros((1, patch_size, patch_size, n_bands), dtype="float32")
    try:
        shape = tuple(np.asarray(model.predict_on_batch(probe)).shape)
    except Exception as error:  # noqa: BLE001 - any failure of the user's model
        raise IannError(
            _("Architecture <{}> cannot take a {} x {} x {} patch: {}").format(
                architecture, patch_size, patch_size, n_bands, error
            )
        )
    want = (1, patch_size, patch_size, n_classes)
    if shape != want:
        raise IannError(
            _(
                "Architecture <{}> gives output of shape {} for a {} x {} patch "
                "of {} bands; a model for i.ann must give {} (one probability "
                "per class and input cell)"
            ).format(architecture, shape, patch_size, patch_size, n_bands, want)
        )
