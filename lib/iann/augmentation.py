"""The dihedral group of a square tile: its 8 flips and 90-degree rotations.

Training draws one of them for each patch and epoch (augmentation);
classification can average the predictions of all 8 (test-time
augmentation), each mapped back by the inverse transform.
"""

import numpy as np


def dihedral(array, k):
    """One of the 8 flips and 90-degree rotations of (rows, cols, ...)."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def undo_dihedral(array, k):
    """The inverse of dihedral(array, k)."""
    out = array[:, ::-1] if k >= 4 else array
    return np.rot90(out, -(k % 4), axes=(0, 1))
