"""Listings of volumes to training batches: slicing, the slice cache and manifest, datasets."""
