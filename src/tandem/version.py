"""tandem's version (floor 0: what run markers and model cards record; ``tandem.__version__`` re-exports it)."""

__version__ = "0.1.0"
