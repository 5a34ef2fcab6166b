"""Data: read records, detect formats, build examples, encode, split and collate.

See docs/architecture.md for the contracts (examples, features, batches).
"""

from tandem.data.collate import batches, collate
from tandem.data.encode import EncodeStats, encode_all, encode_preference, encode_sft
from tandem.data.errors import DataError, DataFileNotFound
from tandem.data.formats import FORMATS, LoadReport, detect_format, examples_from_rows, load_examples, load_source
from tandem.data.readers import MAX_RECORD_BYTES, iter_records, read_records
from tandem.data.templates import NAMED_TEMPLATES, resolve_chat_template, set_chat_template
from tandem.data.roles import ROLE_FORMATS, no_usable_message
from tandem.data.splits import split_parts, train_val_split
from tandem.data.types import PreferenceExample, SFTExample, UnpairedExample

__all__ = [
    "DataError",
    "DataFileNotFound",
    "EncodeStats",
    "FORMATS",
    "NAMED_TEMPLATES",
    "LoadReport",
    "MAX_RECORD_BYTES",
    "PreferenceExample",
    "ROLE_FORMATS",
    "SFTExample",
    "UnpairedExample",
    "batches",
    "collate",
    "detect_format",
    "encode_all",
    "encode_preference",
    "encode_sft",
    "examples_from_rows",
    "iter_records",
    "load_examples",
    "load_source",
    "no_usable_message",
    "read_records",
    "resolve_chat_template",
    "set_chat_template",
    "split_parts",
    "train_val_split",
]
