"""The losses of i.ann.train.

Cross-entropy and the focal loss act on each cell alone. The overlap
losses (dice, tversky, lovasz) add to the cross-entropy a term of the whole
batch per class, in which a class of few cells weighs as much as a common
one: a soft Dice or Tversky index (Milletari et al. 2016, Salehi et al.
2017) or the Lovasz-softmax surrogate of the Jaccard index (Berman et al.
2018), the combination current segmentation toolkits use for imbalanced
classes. They are written with keras.ops, for every backend, and
registered with Keras (package `iann`), so that a bundle trained with any
of them loads with `keras.saving.load_model` and its compiled loss.
"""

import keras
from keras import ops

LOSSES = ("crossentropy", "focal", "dice", "tversky", "lovasz")
# Tversky's weights of false positives and false negatives: more on missed
# cells, the error of rare classes (Salehi et al. 2017).
TVERSKY_ALPHA = 0.3
TVERSKY_BETA = 0.7


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


@keras.saving.register_keras_serializable(package="iann")
class CrossEntropyWithOverlap(keras.losses.Loss):
    """Cross-entropy of the labelled cells plus a per-class overlap term.

    The cross-entropy is Keras's (the weighted sum over the batch's cells,
    divided by their number); the term is 1 minus a soft overlap index,
    averaged over the classes with labelled cells in the batch:

    - `tversky`: (TP + 1) / (TP + alpha FP + beta FN + 1) of each class,
      with TP, FP and FN sums of probabilities (alpha = beta = 0.5: Dice);
    - `lovasz`: the Lovasz-softmax surrogate of the Jaccard index.

    Unlabelled cells (sample weight 0) are left out of both terms; class
    weights weigh the cross-entropy only.
    """

    def __init__(
        self,
        overlap="tversky",
        alpha=0.5,
        beta=0.5,
        name="crossentropy_with_overlap",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.overlap = overlap
        self.alpha = alpha
        self.beta = beta

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras passes the sample weights here, and call() alone would not
        # see them: the overlap term needs to know the unlabelled cells.
        y_pred = ops.cast(y_pred, "float32")
        n_classes = ops.shape(y_pred)[-1]
        p = ops.reshape(y_pred, (-1, n_classes))
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        if sample_weight is None:
            weights = ops.ones_like(p[:, 0])
        else:
            weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        labelled = ops.cast(weights > 0, "float32")
        one_hot = ops.one_hot(labels, n_classes) * labelled[:, None]
        p_true = ops.clip(ops.sum(one_hot * p, axis=-1), keras.config.epsilon(), 1.0)
        crossentropy = ops.sum(-ops.log(p_true) * weights) / ops.cast(
            ops.shape(weights)[0], "float32"
        )
        p = p * labelled[:, None]
        if self.overlap == "lovasz":
            per_class = lovasz_per_class(one_hot, p)
        else:
            per_class = tversky_per_class(one_hot, p, self.alpha, self.beta)
        present = ops.cast(ops.sum(one_hot, axis=0) > 0, "float32")
        term = ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)
        return crossentropy + term

    def call(self, y_true, y_pred):
        return self(y_true, y_pred)

    def get_config(self):
        return {
            **super().get_config(),
            "overlap": self.overlap,
            "alpha": self.alpha,
            "beta": self.beta,
        }


def tversky_per_class(one_hot, p, alpha, beta):
    """1 - the soft Tversky index of each class, from (cells, classes) arrays."""
    true_positive = ops.sum(one_hot * p, axis=0)
    false_positive = ops.sum(p, axis=0) - true_positive
    false_negative = ops.sum(one_hot, axis=0) - true_positive
    index = (true_positive + 1.0) / (
        true_positive + alpha * false_positive + beta * false_negative + 1.0
    )
    return 1.0 - index


def lovasz_per_class(one_hot, p):
    """The Lovasz-softmax loss of each class, from (cells, classes) arrays.

    The errors |y - p| of a class sorted from the largest, each weighted by
    how much it adds to the class's Jaccard loss (Berman et al. 2018,
    Algorithm 1); cells left out have an error of 0 and add nothing.
    """
    errors = ops.transpose(ops.abs(one_hot - p))  # (classes, cells)
    truth = ops.transpose(one_hot)
    order = ops.stop_gradient(ops.argsort(-errors, axis=-1))
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    truth_sorted = ops.take_along_axis(truth, order, axis=-1)
    positives = ops.sum(truth, axis=-1, keepdims=True)
    intersection = positives - ops.cumsum(truth_sorted, axis=-1)
    union = positives + ops.cumsum(1.0 - truth_sorted, axis=-1)
    jaccard = 1.0 - intersection / union
    gradient = ops.concatenate(
        [jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1
    )
    return ops.sum(errors_sorted * ops.stop_gradient(gradient), axis=-1)


def make_loss(name, gamma):
    """The loss called `name` (one of LOSSES); `gamma` for the focal loss."""
    if name == "focal":
        return SparseFocalLoss(gamma=gamma)
    if name == "dice":
        return CrossEntropyWithOverlap("tversky", 0.5, 0.5)
    if name == "tversky":
        return CrossEntropyWithOverlap("tversky", TVERSKY_ALPHA, TVERSKY_BETA)
    if name == "lovasz":
        return CrossEntropyWithOverlap("lovasz")
    return keras.losses.SparseCategoricalCrossentropy()
