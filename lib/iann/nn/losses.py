"""The losses of i.ann.train.

The focal loss is registered with Keras (package `iann`), so that a bundle
trained with it loads with `keras.saving.load_model` and its compiled loss.
"""

import keras
from keras import ops

LOSSES = ("crossentropy", "focal")


@keras.saving.register_keras_serializable(package="iann")
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
    """The loss called `name` (one of LOSSES); `gamma` for the focal loss."""
    if name == "focal":
        return SparseFocalLoss(gamma=gamma)
    return keras.losses.SparseCategoricalCrossentropy()
