"""Patches: a patch dataset planned (where patches are cut, the split in
spatial blocks, what each holds) and written (formats/dataset.py).

sampling.py is pure NumPy; plan.py and write.py read and write through
iann.grass. Imports iann.formats and iann.grass.
"""
