"""A network whose cost is negligible: one 1 x 1 convolution and a softmax.

An architecture file for i.ann.train (architecture=bench/pointwise_architecture.py)
and for bench_scale.py, which measures everything of a job but the network.
"""

import keras
from keras import layers


def build_model(input_shape, n_classes):
    inputs = keras.Input(shape=(None, None, input_shape[-1]), name="bands")
    scores = layers.Conv2D(n_classes, 1, name="pointwise")(inputs)
    outputs = layers.Softmax(axis=-1, name="softmax")(scores)
    return keras.Model(inputs, outputs, name="pointwise")
