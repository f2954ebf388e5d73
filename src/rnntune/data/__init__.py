"""Datasets for Normal/Abnormal sequence classification: a synthetic generator, NPZ and CSV
loaders that validate what they read, the UCR/UEA archive formats (TSV pair and ``.ts``),
stratified splits with a train-only scaler (or the file's own train/val/test split), and a
fingerprint that lets a worker prove it loaded the data the experiment was registered with.

Pure numpy + scikit-learn: no torch, no database.
"""

from __future__ import annotations

from rnntune.data._load import load_dataset
from rnntune.data._spec import (
    KINDS,
    PART_NAMES,
    SYNTHETIC_DEFAULTS,
    TEST,
    TRAIN,
    VAL,
    Dataset,
    DataSpec,
    parse_data_spec,
)
from rnntune.data._splits import (
    SPLIT_GIVEN,
    SPLIT_GIVEN_CARVED,
    SPLIT_RANDOM,
    SPLIT_RESPLIT,
    Splits,
    fingerprint,
    resplit_dataset,
    split_dataset,
    split_source_text,
)
from rnntune.data.synthetic import make_synthetic

__all__ = [
    "KINDS",
    "PART_NAMES",
    "SPLIT_GIVEN",
    "SPLIT_GIVEN_CARVED",
    "SPLIT_RANDOM",
    "SPLIT_RESPLIT",
    "TEST",
    "TRAIN",
    "VAL",
    "SYNTHETIC_DEFAULTS",
    "DataSpec",
    "Dataset",
    "Splits",
    "parse_data_spec",
    "load_dataset",
    "make_synthetic",
    "fingerprint",
    "split_dataset",
    "resplit_dataset",
    "split_source_text",
]
