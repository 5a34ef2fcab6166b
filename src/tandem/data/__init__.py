"""Data: read records, detect formats, build examples, encode, split and collate.

See docs/architecture.md for the contracts (examples, features, batches).
"""

from tandem.data.collate import batches, collate
from tandem.data.encode import EncodeStats, encode_all, encode_preference, encode_sft
from tandem.data.errors import DataError, DataFileNotFound
from tandem.data.formats import FORMATS, LoadReport, detect_format, load_examples
from tandem.data.readers import MAX_RECORD_BYTES, read_records
from tandem.data.roles import ROLE_FORMATS, no_usable_message
from tandem.data.splits import split_parts, train_val_split
from tandem.data.types import PreferenceExample, SFTExample

__all__ = [
    "DataError",
    "DataFileNotFound",
    "EncodeStats",
    "FORMATS",
    "LoadReport",
    "MAX_RECORD_BYTES",
    "PreferenceExample",
    "ROLE_FORMATS",
    "SFTExample",
    "batches",
    "collate",
    "detect_format",
    "encode_all",
    "encode_preference",
    "encode_sft",
    "load_examples",
    "no_usable_message",
    "read_records",
    "split_parts",
    "train_val_split",
]
