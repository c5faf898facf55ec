"""The band transform shared by training and classification."""

import numpy as np


def standardise(images, mean, std):
    """(x - mean) / std per band, float32, NULL (NaN) cells set to 0 (the mean)."""
    x = (np.asarray(images, dtype=np.float32) - mean) / std
    return np.nan_to_num(x, copy=False, nan=0.0)


def standardise_bands(block, mean, std):
    """Standardise a (bands, rows, cols) float32 block in place; NULL -> 0.

    The transform of standardise, without a second copy of the block: a
    tile row of a wide region in i.ann.classify is hundreds of MB.
    """
    for band in range(block.shape[0]):
        values = block[band]
        values -= mean[band]
        values /= std[band]
        np.nan_to_num(values, copy=False, nan=0.0)
    return block


def band_transform(statistics, band_indices=None):
    """Mean and std arrays (float32) for the chosen bands of a dataset."""
    mean = np.asarray(statistics["mean"], dtype=np.float32)
    std = np.asarray(statistics["std"], dtype=np.float32)
    if band_indices is not None:
        mean, std = mean[band_indices], std[band_indices]
    return mean, std


def bundle_transform(metadata):
    """Mean and std arrays (float32) stored in a model bundle's metadata."""
    normalisation = metadata.normalisation
    return (
        np.asarray(normalisation["mean"], dtype=np.float32),
        np.asarray(normalisation["std"], dtype=np.float32),
    )
