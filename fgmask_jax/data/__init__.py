"""Datasets, labels, splits and the input pipeline."""
