"""tandem: align language models without paying the alignment tax.

The Python API (docs/api.md) is exported lazily, so ``import tandem`` stays fast: ``tandem.train``,
``tandem.Recipe``, ``tandem.Run``, ``tandem.Callback``, ``tandem.compare``, ``tandem.evaluate``, ``tandem.merge``,
``tandem.probe`` and ``tandem.TandemError`` (the base of every user error).
"""

from tandem.version import __version__  # noqa: F401 - the package's version

_API = ("Callback", "InputError", "Recipe", "Run", "compare", "evaluate", "merge", "probe", "train")


def __getattr__(name: str):
    if name in _API:
        from tandem import api

        return getattr(api, name)
    if name == "TandemError":
        from tandem.errors import TandemError

        return TandemError
    raise AttributeError(f"module 'tandem' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "TandemError"])


__all__ = [*_API, "TandemError", "__version__"]
