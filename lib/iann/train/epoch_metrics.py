"""The accuracy figures the study reported, on the validation patches, per epoch.

Overall accuracy, Cohen's kappa, macro F1 (over the classes present in
the validation labels or the predictions) and the F1 of each class, from
one confusion matrix of the validation cells (unlabelled cells left out).
They go into the epoch's logs as val_overall_accuracy, val_kappa,
val_macro_f1 and val_f1_<class value>, so that the history, the per-epoch
message, the curves, the bundle, the choice of the kept epoch and early
stopping all see them.
"""

import keras
import numpy as np

from iann.accuracy.metrics import matrix_scores
from iann.formats.dataset import UNLABELLED

# What monitor= may name, and whether lower values are better.
MONITORS = {
    "val_loss": "min",
    "val_overall_accuracy": "max",
    "val_kappa": "max",
    "val_macro_f1": "max",
}


class ValidationMetrics(keras.callbacks.Callback):
    """Adds the study's figures on the validation patches to each epoch's logs.

    `sequence` gives the validation batches in the order of `labels` (the
    dataset's validation labels, UNLABELLED for unlabelled cells); `values`
    are the class values, which name the per-class keys. Put it before the
    callbacks that read the logs.
    """

    def __init__(self, sequence, labels, values):
        super().__init__()
        self.sequence = sequence
        self.labels = labels
        self.values = list(values)

    def confusion(self):
        classes = len(self.values)
        matrix = np.zeros(classes * classes, dtype=np.int64)
        size = self.sequence.batch_size
        for index in range(len(self.sequence)):
            x = self.sequence[index][0]
            predicted = np.argmax(self.model.predict_on_batch(x), axis=-1)
            codes = np.asarray(self.labels[index * size : index * size + len(x)])
            keep = codes != UNLABELLED
            matrix += np.bincount(
                codes[keep].astype(np.int64) * classes + predicted[keep],
                minlength=classes * classes,
            )
        return matrix.reshape(classes, classes)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        result = matrix_scores(self.confusion())
        if result is None:
            return
        logs["val_overall_accuracy"] = result["overall_accuracy"]
        logs["val_kappa"] = result["kappa"]
        logs["val_macro_f1"] = result["macro_f1"]
        for value, f1 in zip(self.values, result["f1"]):
            logs["val_f1_{}".format(value)] = float(f1)
