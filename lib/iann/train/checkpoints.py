"""Per-epoch checkpoints of a training run, and resuming from them.

A checkpoint folder holds one sub-folder per kept epoch (the last one and
the best one) and state.json, which names them and holds the settings and
the progress (history, best epoch, early-stopping count). The weights are
saved with Keras's own `Model.save_weights`, which writes the optimizer's
state beside the layers' weights, and restored with `Model.load_weights`.
"""

import json
import os
import shutil

import keras

from iann.errors import IannError

STATE = "state.json"
WEIGHTS = "model.weights.h5"
BEST_WEIGHTS = "best.weights.h5"


class Checkpoint(keras.callbacks.Callback):
    """Everything needed to resume, written after each epoch.

    Each epoch goes into a new sub-folder (weights and optimizer state, and
    the best weights when the epoch is the best so far), and state.json,
    replaced atomically last, names it: a run killed at any moment leaves a
    consistent checkpoint of its last finished epoch.
    """

    def __init__(self, folder, settings, progress):
        super().__init__()
        self.folder = folder
        self.settings = settings
        self.progress = progress

    def on_epoch_end(self, epoch, logs=None):
        name = "epoch-{}".format(epoch + 1)
        target = os.path.join(self.folder, name)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        self.model.save_weights(os.path.join(target, WEIGHTS))
        if self.progress.best_epoch == epoch + 1:
            self.model.save_weights(os.path.join(target, BEST_WEIGHTS))
        state = {
            "folder": name,
            "epochs_done": epoch + 1,
            "best_folder": "epoch-{}".format(self.progress.best_epoch),
            "stopped": bool(self.model.stop_training),
            "settings": self.settings,
            "progress": self.progress.state(),
        }
        temporary = os.path.join(self.folder, STATE + ".tmp")
        with open(temporary, "w") as f:
            json.dump(state, f)
        os.replace(temporary, os.path.join(self.folder, STATE))
        keep = {name, state["best_folder"]}
        for entry in os.listdir(self.folder):
            if entry.startswith("epoch-") and entry not in keep:
                shutil.rmtree(os.path.join(self.folder, entry), ignore_errors=True)


def read_checkpoint(folder):
    """The state of a checkpoint folder, or None when there is none."""
    try:
        with open(os.path.join(folder, STATE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# Settings of what follows the training (train/precision.py): they may
# change between a run and its resumption.
AFTER_TRAINING = ("inference_precision", "calibration_patches")


def resumable_state(folder, settings):
    """The state of the checkpoint to resume, made with the same `settings`.

    `settings` is a dict as saved in the checkpoint; only the number of
    epochs may differ, and what is done after training (AFTER_TRAINING).
    """
    state = read_checkpoint(folder) if folder else None
    if state is None:
        raise IannError(_("There is no checkpoint <{}> to resume from").format(folder))
    changed = [
        key
        for key in settings
        if key not in ("epochs",) + AFTER_TRAINING
        and state["settings"].get(key) != settings[key]
    ]
    if changed:
        raise IannError(
            _(
                "Checkpoint <{}> was made with other settings ({}); resume "
                "with the same settings or start again without -r"
            ).format(folder, ", ".join(changed))
        )
    return state


def restore_checkpoint(model, folder, state):
    """Load the last epoch of a checkpoint into `model`; the best weights.

    The compiled model gets the weights and optimizer state of the last
    epoch; returned are the weights of the best epoch (None when that epoch
    saved none). The optimizer is built first, so that Keras loads its state
    instead of skipping it.
    """
    model.optimizer.build(model.trainable_variables)
    best = None
    best_path = os.path.join(folder, state["best_folder"], BEST_WEIGHTS)
    try:
        if os.path.isfile(best_path):
            model.load_weights(best_path)
            best = model.get_weights()
        model.load_weights(os.path.join(folder, state["folder"], WEIGHTS))
    except (OSError, ValueError) as error:
        raise IannError(
            _("Checkpoint <{}> does not fit this model: {}").format(folder, error)
        )
    if int(model.optimizer.iterations) == 0:
        raise IannError(
            _("Checkpoint <{}> does not fit this model's optimizer").format(folder)
        )
    return best
