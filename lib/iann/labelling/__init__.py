"""Choosing where to label next (i.ann.sample): propose.py chooses cells,
batch.py reads the maps and writes the points."""
