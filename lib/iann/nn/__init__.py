"""Networks: the architectures (fcn, U-Net, a user's file), their
receptive field, the losses, the dihedral augmentation, the band
normalisation, the devices and precisions they run in, and a bundle's
Keras model loaded.

Backend-neutral Keras 3. Imports iann.errors and iann.formats only.
"""
