"""tandem: align language models without paying the alignment tax."""

__version__ = "0.1.0"
