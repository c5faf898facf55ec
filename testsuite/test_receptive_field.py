"""The receptive field, computed from the layer graph or measured (no GRASS)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from iann.nn.architectures import build_model  # noqa: E402
from iann.nn.receptive_field import computed_reach, receptive_field  # noqa: E402


def linear_conv(kernel, dilation=1):
    """A convolution whose output grows with every input cell in its window."""
    return keras.layers.Conv2D(
        1,
        kernel,
        dilation_rate=dilation,
        padding="same",
        use_bias=False,
        kernel_initializer="ones",
    )


def oracle_reach(model, size=41):
    """Reach from one input cell: the output cells a unit impulse changes.

    With positive kernels and no activation nothing cancels, so the cells
    that change are exactly those whose field holds the impulse.
    """
    impulse = np.zeros((1, size, size, 1), dtype="float32")
    centre = size // 2
    impulse[0, centre, centre, 0] = 1.0
    changed = np.asarray(model.predict_on_batch(impulse))[0, ..., 0] != 0
    rows = np.flatnonzero(changed.any(axis=1))
    assert 0 < rows[0] and rows[-1] < size - 1, "the probe is too small"
    return int(max(centre - rows[0], rows[-1] - centre))


def test_unknown_layer_is_measured():
    # A layer of a kind the graph walk does not know (Lambda) between a 3x3
    # convolution and a 5x5 one dilated by 2: 1 + 2 + 8 = 11 cells.
    inputs = keras.Input(shape=(None, None, 1))
    x = linear_conv(3)(inputs)
    x = keras.layers.Lambda(lambda t: 2.0 * t)(x)
    outputs = linear_conv(5, dilation=2)(x)
    model = keras.Model(inputs, outputs)
    assert computed_reach(model) is None
    assert receptive_field(model, 1) == (11, "measured")
    assert oracle_reach(model) == 5


def test_shared_layer_is_measured_not_miscounted():
    # One 3x3 convolution applied twice reaches 2 cells; a walk that saw the
    # layer once would say 1.
    conv = linear_conv(3)
    inputs = keras.Input(shape=(None, None, 1))
    model = keras.Model(inputs, conv(conv(inputs)))
    assert receptive_field(model, 1) == (5, "measured")
    assert oracle_reach(model) == 2


def test_built_in_fcn_is_computed():
    model = build_model("fcn", (None, None, 2), 3, filters=2)
    assert receptive_field(model, 2) == (51, "computed")
