"""Training curves as a picture."""

import numpy as np

# The validation figures of the third panel (epoch_metrics), when present.
AGREEMENT = (
    ("val_overall_accuracy", "overall accuracy"),
    ("val_kappa", "kappa"),
    ("val_macro_f1", "macro F1"),
)


def plot_history(history, path, title=None):
    """Curves per epoch as a PNG: loss, accuracy and the validation figures.

    Loss and accuracy of the training and validation patches; with
    validation patches, a third panel has the overall accuracy, kappa and
    macro F1 of the validation cells.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "Loss"), ("accuracy", "Accuracy")]
    agreement = [(key, name) for key, name in AGREEMENT if key in history]
    fig, axes = plt.subplots(
        1, len(panels) + bool(agreement), figsize=(4.5 * (2 + bool(agreement)), 3.6)
    )
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for axis, (key, label) in zip(axes, panels):
        for prefix, name in (("", "training"), ("val_", "validation")):
            if prefix + key in history:
                axis.plot(epochs, history[prefix + key], marker="o", label=name)
        axis.set_ylabel(label)
    if agreement:
        for key, name in agreement:
            axes[-1].plot(epochs, history[key], marker="o", label=name)
        axes[-1].set_ylabel("Validation cells")
    for axis in axes:
        axis.set_xlabel("Epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
