"""Whole volumes through a trained model: harmonizer, policy, multi-view fusion, files."""
