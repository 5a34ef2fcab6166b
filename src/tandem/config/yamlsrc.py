"""Reading recipe YAML: duplicate keys refused, ``--set key.sub=value`` overrides, error locations.

A key given twice in one mapping is an error naming both lines; a ``--set`` whose value is not valid YAML is an
error naming the flag. :func:`line_of` finds the line of a key path in the YAML text, :func:`flag_of` the
``--set`` flag that wrote it (so a bad value given on the command line is blamed on the flag, not the file).
"""

from __future__ import annotations

from typing import Any

import re

import yaml

from tandem.errors import TandemError


class RecipeError(TandemError, ValueError):
    """A bad recipe, ``--set`` flag or ``Recipe.set`` value; the message names the field, line and file."""


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping."""

    def __init__(self, key: str, first: int, second: int):
        super().__init__(f"key '{key}' is given twice (lines {first} and {second}); keep one")
        self.key, self.first, self.second = key, first, second


class YamlLimitError(yaml.YAMLError):
    """YAML past a size bound: aliases that expand to too many nodes, nesting too deep, an integer too long."""


#: nodes a document may expand to once its aliases are followed (a recipe has a few hundred; an alias bomb billions)
MAX_EXPANDED_NODES = 100_000


def expanded_size(node, memo: dict | None = None) -> int:
    """Nodes of ``node`` with every alias expanded (what ``model_dump`` would walk), computed without expanding."""
    memo = {} if memo is None else memo
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a cycle (a recursive alias) counts once here; it is refused by the constructor anyway
    if isinstance(node, yaml.MappingNode):
        n = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        n = 1 + sum(expanded_size(v, memo) for v in node.value)
    else:
        n = 1
    memo[id(node)] = n
    return n


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (merge keys ``<<`` excepted), aliases that
    expand past :data:`MAX_EXPANDED_NODES` nodes (an alias bomb) and integers too long for Python."""

    def compose_document(self):
        node = super().compose_document()
        if node is not None and (n := expanded_size(node)) > MAX_EXPANDED_NODES:
            raise YamlLimitError(f"aliases (*name) expand to {n} values, more than the {MAX_EXPANDED_NODES} a recipe may "
                                 "hold (an alias bomb?); write the values out or use fewer aliases")
        return node

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise YamlLimitError(f"line {node.start_mark.line + 1}: an integer with {len(node.value)} digits is too long; "
                                 "give a number that fits (a float such as 1e300, or a smaller integer)") from None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = key_node.value
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 1e-4 or 5e3 (no dot) as a string; recipes and --set values mean a number (YAML 1.2)
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_yaml_int)
MAX_FLOW_DEPTH = 200


def flow_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in ``text`` outside quotes (a cheap bound checked before parsing)."""
    if text.count("[") + text.count("{") <= MAX_FLOW_DEPTH:
        return 0
    depth = deepest = 0
    quote = ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return deepest


def load_yaml(text: str):
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` for a key given twice in one mapping and
    :class:`YamlLimitError` for YAML past a size bound (alias bomb, nesting thousands of levels deep, huge integer)."""
    if flow_depth(text) > MAX_FLOW_DEPTH:  # before PyYAML, whose scanner slows down with each level
        raise YamlLimitError(f"nested more than {MAX_FLOW_DEPTH} levels deep ([ or {{); a recipe is a few levels deep")
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise YamlLimitError("nested too deeply (thousands of levels of [ or {); a recipe is a few levels deep") from None


def override_key(item: str) -> list[str]:
    key = item.split("=", 1)[0].strip()
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise RecipeError(f"--set {item!r}: expected key.sub=value (empty key part)")
    return [p.strip() for p in parts]


def _coerce(item: str, text: str) -> Any:
    if text == "":
        return ""
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(
            f"--set {item}: the value {text!r} is not valid YAML ({first}); quote it, e.g. --set 'key=\"...\"'"
        ) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to the raw recipe dict."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected key.sub=value")
        parts = override_key(item)
        node = raw
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise RecipeError(f"--set {item}: {p!r} is not a mapping")
            node = node[p]
        node[parts[-1]] = _coerce(item, item.split("=", 1)[1])
    return raw


def line_of(text: str, loc: tuple) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its closest existing parent)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    line = k.start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def flag_of(overrides: list[str], loc: tuple) -> str | None:
    """The last ``--set`` flag that wrote ``loc`` (or a parent or a child of it), if any."""
    key = [str(x) for x in loc]
    for item in reversed(overrides):
        parts = override_key(item)
        n = min(len(parts), len(key))
        if parts[:n] == key[:n]:
            return item
    return None
