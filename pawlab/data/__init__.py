"""Data: from a folder or zip of images to labelled, split uint8 arrays. Imports no torch.

sources.py   folders and zips, read in place
catalog.py   labels and the seeded, stable split (small pure functions over names)
decode.py    bytes -> pixels at a size, robustly
workers.py   the process pool that decodes
pack.py      the packed cache: memory-mapped arrays and a manifest, updated incrementally
datasets.py  `prepare`, `load_dataset` and the sets evaluation and submission read
"""

from pawlab.data.catalog import Item, Skipped
from pawlab.data.datasets import (
    Dataset,
    EvalSet,
    ImageSet,
    PrepareReport,
    load_dataset,
    load_eval_set,
    load_unlabeled,
    prepare,
)

__all__ = [
    "Dataset",
    "EvalSet",
    "ImageSet",
    "Item",
    "PrepareReport",
    "Skipped",
    "load_dataset",
    "load_eval_set",
    "load_unlabeled",
    "prepare",
]
