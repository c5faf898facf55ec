"""Keras callbacks of i.ann.train: GRASS messages and early stopping, malloc."""

import math
import os
import time

import keras
import numpy as np

import grass.script as gs

from iann.malloc import reuse_freed_memory


class GrassProgress(keras.callbacks.Callback):
    """Epoch messages, gs.percent, the best weights, early stopping.

    The state (history, best epoch, epochs without improvement) can be
    saved and restored, so that a resumed run continues the same way.
    """

    # The figures of the epoch's message line, in this order.
    SHOWN = (
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "val_overall_accuracy",
        "val_kappa",
        "val_macro_f1",
    )

    def __init__(self, epochs, monitor, patience=0, state=None, mode="min"):
        super().__init__()
        self.epochs = epochs
        self.monitor = monitor
        self.patience = patience
        # Values are compared as sign x value, lower is better.
        self.sign = 1.0 if mode == "min" else -1.0
        state = state or {}
        self.best = state.get("best", np.inf)
        self.best_epoch = state.get("best_epoch")
        self.wait = state.get("wait", 0)
        self.history = state.get("history", {})
        self.epoch_seconds = state.get("epoch_seconds", [])
        self.stopped_early = False
        self.best_weights = None

    def state(self):
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "history": self.history,
            "epoch_seconds": self.epoch_seconds,
        }

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self.started
        # The rate the epoch ended with (a schedule's value after its steps).
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        self.epoch_seconds.append(seconds)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        parts = [
            "{}={:.4f}".format(key, logs[key]) for key in self.SHOWN if key in logs
        ]
        gs.message(
            _("Epoch {}/{}: {} ({:.1f} s)").format(
                epoch + 1, self.epochs, " ".join(parts), seconds
            )
        )
        per_class = [
            "{}={:.3f}".format(key[len("val_f1_") :], logs[key])
            for key in logs
            if key.startswith("val_f1_") and not math.isnan(logs[key])
        ]
        if per_class:
            gs.verbose(_("Validation F1 by class: {}").format(" ".join(per_class)))
        # The percentage is for the GUI's progress bar: in a terminal or a
        # log, the epoch lines are the progress, and "8%" would share the
        # next epoch's line.
        if os.environ.get("GRASS_MESSAGE_FORMAT") == "gui":
            gs.percent(epoch + 1, self.epochs, 1)
        value = logs.get(self.monitor)
        if value is not None and self.sign * value < self.best:
            self.best = self.sign * float(value)
            self.best_epoch = epoch + 1
            self.best_weights = self.model.get_weights()
            self.wait = 0
        else:
            self.wait += 1
            if self.patience and self.wait >= self.patience:
                gs.message(
                    _("Stopping: {} has not improved for {} epochs").format(
                        self.monitor, self.wait
                    )
                )
                self.stopped_early = True
                self.model.stop_training = True
        last = epoch + 1 >= self.epochs or self.model.stop_training
        if last and self.best_weights is None:
            # No epoch had a figure to keep (NaN loss): keep this one's
            # weights, the averaged ones with ema= (at the end of fit Keras
            # puts the last step's back into the model).
            self.best_weights = self.model.get_weights()


class MallocTuning(keras.callbacks.Callback):
    """Undo TensorFlow's malloc setting that doubles the training time.

    When Keras feeds a PyDataset to TensorFlow (through a generator
    dataset), TensorFlow sets glibc's M_TRIM_THRESHOLD, which freezes the
    mmap threshold at 128 KiB: every batch-sized buffer is then mmap'ed and
    unmapped again, and on a 2-core machine half the time went to the
    kernel (measured: 35 s per epoch instead of 17 s). See malloc.py.
    """

    def on_epoch_begin(self, epoch, logs=None):
        reuse_freed_memory()

    def on_test_begin(self, logs=None):
        reuse_freed_memory()
