"""Volumes: typed images and label maps with geometry, NIfTI/ITK I/O, spatial, intensity."""
