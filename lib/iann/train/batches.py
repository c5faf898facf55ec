"""The training batches: patches read from the dataset, standardised, augmented."""

import keras
import numpy as np

from iann.formats.dataset import UNLABELLED
from iann.nn.augmentation import dihedral
from iann.nn.normalise import standardise


class PatchSequence(keras.utils.PyDataset):
    """Batches of standardised patches, integer labels and per-cell weights.

    Built with workers (threads) so that the next batches are prepared while
    the network trains on the current one.

    Unlabelled cells get weight 0, so neither the loss nor the weighted
    accuracy sees them. The order of the patches in an epoch and, with
    `augment`, the flip or 90-degree rotation each patch gets are drawn from
    (seed, epoch, batch): a run is repeatable, and a resumed run sees the
    same batches as an uninterrupted one.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        mean,
        std,
        class_weights,
        band_indices=None,
        augment=False,
        shuffle=True,
        seed=0,
        epoch=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.mean = mean
        self.std = std
        self.class_weights = np.asarray(class_weights, dtype=np.float32)
        self.band_indices = band_indices
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.set_epoch(epoch)

    def set_epoch(self, epoch):
        # Called by EpochOrder before Keras starts the epoch's workers; not
        # from on_epoch_end, which Keras also calls once before training.
        self.epoch = epoch
        self.order = np.arange(len(self.images))
        if self.shuffle:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(
                len(self.images)
            )

    def __len__(self):
        return int(np.ceil(len(self.order) / self.batch_size))

    def __getitem__(self, index):
        batch = np.sort(
            self.order[index * self.batch_size : (index + 1) * self.batch_size]
        )
        images = self.images[batch]
        if self.band_indices is not None:
            images = images[..., self.band_indices]
        x = standardise(images, self.mean, self.std)
        codes = np.asarray(self.labels[batch])
        labelled = codes != UNLABELLED
        y = np.where(labelled, codes, 0).astype(np.int32)
        w = np.where(labelled, self.class_weights[y], 0.0).astype(np.float32)
        if self.augment:
            x, y, w = self._augment(x, y, w, index)
        return x, y, w

    def _augment(self, x, y, w, index):
        # Seeded by batch and epoch, not by call order: worker threads may
        # build batches in any order, and a run must be repeatable.
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        for i, k in enumerate(rng.integers(0, 8, size=len(x))):
            x[i], y[i], w[i] = (dihedral(a, k) for a in (x[i], y[i], w[i]))
        return x, y, w


class EpochOrder(keras.callbacks.Callback):
    """Tells a PatchSequence which epoch begins (its order and augmentation)."""

    def __init__(self, sequence):
        super().__init__()
        self.sequence = sequence

    def on_epoch_begin(self, epoch, logs=None):
        self.sequence.set_epoch(epoch)
