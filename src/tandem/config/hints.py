"""Close-match hints for unknown recipe keys: ``schedule.max_step`` -> did you mean ``schedule.max_steps``?

The candidates are the fields of the block the key is in (read from the pydantic models, so a new field is a
candidate at once), TRL's names that block accepts (:mod:`tandem.config.aliases`), and, for a key at the top level,
the fields of every block (``lr`` -> ``optimizer.lr``).
"""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel

from tandem.config.aliases import ALIASES, KNOWN, NO_EQUIVALENT


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation holds (``X | None``, ``list[X]``, ``Annotated[...]`` unwrapped)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def block_of(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class of the block at ``loc`` (``("optimizer",)`` -> ``OptimizerConfig``), or None."""
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        models = _models_in(field.annotation) if field is not None else []
        if not models:
            return None if not isinstance(part, int) else model
        model = models[0]
    return model


def hint(root: type[BaseModel], loc: tuple) -> str | None:
    """``did you mean 'a.b'?`` for the unknown key at ``loc``, a TRL name's explanation, or None."""
    name, parent = str(loc[-1]), tuple(str(x) for x in loc[:-1] if not isinstance(x, int))
    if name in NO_EQUIVALENT:
        return f"TRL's {name} has no tandem equivalent ({NO_EQUIVALENT[name]}): remove it"
    block = block_of(root, tuple(loc[:-1]))
    if block is None:
        return None
    prefix = "".join(f"{p}." for p in parent)
    own = list(block.model_fields)
    trl = [k for k in KNOWN if not parent or ALIASES.get(k, "").startswith(prefix)]
    match = difflib.get_close_matches(name, own + trl, n=1, cutoff=0.75)
    if match:
        m = match[0]
        target = f"{prefix}{m}" if m in own else ALIASES.get(m, m)
        return f"did you mean '{target}'?"
    if not parent:  # a field of some block, written at the top level
        paths = {f"{k}.{f}": f for k, fld in root.model_fields.items() for b in _models_in(fld.annotation)
                 for f in b.model_fields}
        match = difflib.get_close_matches(name, list(paths.values()), n=1, cutoff=0.75)
        if match:
            return f"did you mean '{next(p for p, f in paths.items() if f == match[0])}'?"
    return None


__all__ = ["block_of", "hint"]
