"""Datasets: MMRec-format loading and the built-in synthetic generator."""
from .dataset import TEST, TRAIN, VALID, Dataset
from .mmrec import load_mmrec, read_new_interactions, save_mmrec
from .synthetic import synthetic_dataset

__all__ = ["Dataset", "TRAIN", "VALID", "TEST", "load_mmrec", "read_new_interactions", "save_mmrec",
           "synthetic_dataset"]
