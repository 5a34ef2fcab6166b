"""Data: read records, detect formats, build examples, encode, split and collate.

See docs/architecture.md for the contracts (examples, features, batches).
"""

from tandem.data.collate import batches, collate
from tandem.data.encode import EncodeStats, encode_all, encode_preference, encode_sft
from tandem.data.errors import DataError
from tandem.data.formats import FORMATS, LoadReport, detect_format, load_examples
from tandem.data.readers import read_records
from tandem.data.splits import split_parts, train_val_split
from tandem.data.types import PreferenceExample, SFTExample

__all__ = [
    "DataError",
    "EncodeStats",
    "FORMATS",
    "LoadReport",
    "PreferenceExample",
    "SFTExample",
    "batches",
    "collate",
    "detect_format",
    "encode_all",
    "encode_preference",
    "encode_sft",
    "load_examples",
    "read_records",
    "split_parts",
    "train_val_split",
]
