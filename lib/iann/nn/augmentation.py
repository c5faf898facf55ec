"""The dihedral group of a square tile: its 8 flips and 90-degree rotations.

Training draws one of them for each patch and epoch (augmentation);
classification can average the predictions of all 8 (test-time
augmentation), each mapped back by the inverse transform. The rows and
columns are the first two axes of an array (rows, cols, ...), or the two
`axes` given (channels-first tiles: (bands, rows, cols), axes (1, 2)).
"""

import numpy as np


def dihedral(array, k, axes=(0, 1)):
    """One of the 8 flips and 90-degree rotations of the array's `axes`."""
    out = np.rot90(array, k % 4, axes=axes)
    return np.flip(out, axes[1]) if k >= 4 else out


def undo_dihedral(array, k, axes=(0, 1)):
    """The inverse of dihedral(array, k, axes)."""
    out = np.flip(array, axes[1]) if k >= 4 else array
    return np.rot90(out, -(k % 4), axes=axes)
