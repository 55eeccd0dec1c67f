"""Data: discovery of image/mask pairs, image I/O, preprocessing, datasets, augmentation."""
