"""tandem from Python: the functions the CLI calls, for notebooks and scripts (docs/api.md).

```python
import tandem

run = tandem.train({"method": "dpo", "learning_rate": 5e-6, "max_steps": 20, "output_dir": "runs/dpo"},
                   model=model, tokenizer=tok, data={"preference": dataset})
run.summary["final_val"], run.metrics[-1], run.model()
```

* :func:`train` takes a :class:`~tandem.config.recipe.Recipe`, a recipe dict or a YAML path; ``model`` and
  ``tokenizer`` as objects or paths (a peft model stays a peft model: its adapters train); ``data`` per role
  (``sft``, ``preference``, ``pretrain``) as a ``datasets.Dataset``, a list of dicts, a list of strings (plain
  text) or a path, read with the same format detection and checks as the CLI; ``callbacks``:
  :class:`~tandem.io.hooks.Callback` objects. It returns a :class:`Run`.
* :func:`compare`, :func:`evaluate`, :func:`merge` and :func:`probe` are the commands of the same names.
* A user error raises a :class:`~tandem.errors.TandemError` whose message is the CLI's ``error:`` line (the
  library's original exception is its ``__cause__``); nothing here exits the process.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.config.recipe import Recipe
from tandem.errors import TandemError, one_line, user_message
from tandem.io.hooks import Callback

DATA_ROLES = ("sft", "preference", "pretrain")


class InputError(TandemError, ValueError):
    """A user error raised by a library or a check that is not a :class:`TandemError` itself: the message is the
    CLI's line, the original exception is ``__cause__``."""


@contextlib.contextmanager
def user_errors(where: str | os.PathLike | None = None):
    """Re-raise a user error as a :class:`TandemError` with the CLI's one-line message; bugs keep their type."""
    try:
        yield
    except TandemError as e:
        if len(e.args) == 1 and isinstance(e.args[0], str) and "\n" in e.args[0]:
            e.args = (one_line(e.args[0]),)  # the CLI's line (a recipe error lists its problems on one line too)
        raise
    except Exception as e:
        msg = user_message(e, where)
        if msg is None:
            raise
        raise InputError(one_line(msg)) from e


@dataclass
class Run:
    """A training run's directory and what it wrote (``stopped``: a callback stopped it; resume continues)."""

    dir: Path
    summary: dict

    @property
    def stopped(self) -> bool:
        return bool(self.summary.get("stopped"))

    @property
    def metrics(self) -> list[dict]:
        """The rows of ``metrics.jsonl`` (training rows ``split: train``, validation rows ``split: val``)."""
        path = self.dir / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    @property
    def final_dir(self) -> Path:
        """``final/merged`` when it exists (a LoRA run), else ``final/``."""
        merged = self.dir / "final" / "merged"
        return merged if merged.is_dir() else self.dir / "final"

    def model(self, dtype: str = "auto"):
        """The trained model (``final/merged`` of a LoRA run, else ``final/``), in eval mode."""
        return self._load(dtype)[0]

    def tokenizer(self):
        """The trained model's tokenizer, with the chat template it was trained with."""
        from tandem.models import load_tokenizer

        with user_errors():
            return load_tokenizer(str(self.final_dir))

    def _load(self, dtype: str):
        from tandem.models import load_any

        if not (self.dir / "final").is_dir():
            raise InputError(f"{self.dir}: no final/ model (the run {'was stopped' if self.stopped else 'has not finished'};"
                             " resume it to finish)")
        with user_errors():
            return load_any(str(self.final_dir), dtype=dtype)


def _model_name(model) -> str:
    """What the recipe records for a model object: the path or Hub id it was loaded from, else its class."""
    cfg = getattr(model, "config", None)
    name = str(getattr(cfg, "_name_or_path", "") or "")
    peft_cfg = getattr(model, "peft_config", None)
    if isinstance(peft_cfg, Mapping) and peft_cfg:
        name = str(getattr(next(iter(peft_cfg.values())), "base_model_name_or_path", "") or name)
    return name or f"in-memory {type(model).__name__}"


def _data_block(role: str, value: Any, current: Any) -> Any:
    """The recipe's ``data.<role>`` for a user's value: a path (str/Path) or a source dict as given; objects are kept
    in memory (``memory://`` source) with the settings of the recipe's own single source (format, columns, ...)."""
    from tandem.data.memory import register

    if isinstance(value, Mapping) and "source" in value:
        return dict(value)
    keep = {k: v for k, v in current.items() if k != "source"} if isinstance(current, Mapping) else {}
    if isinstance(value, (str, os.PathLike)):
        return {**keep, "source": str(value)}
    return {**keep, "source": register(value, role)}


def resolve_recipe(recipe: Recipe | Mapping | str | os.PathLike | None, model=None, data: Mapping | None = None,
                   overrides: Sequence[str] = (), output_dir: str | os.PathLike | None = None) -> Recipe:
    """The recipe :func:`train` runs: ``recipe`` (object, dict or YAML path) with the model's name, ``data`` and
    ``output_dir`` filled in, checked as the CLI checks a file with ``--set`` flags."""
    from tandem.config.recipe import apply_overrides, load_recipe, parse_recipe

    if isinstance(recipe, (str, os.PathLike)):
        raw = load_recipe(recipe, list(overrides)).model_dump(mode="json")
        overrides = ()
    elif isinstance(recipe, Recipe):
        raw = recipe.model_dump(mode="json")
    else:
        raw = json.loads(json.dumps(dict(recipe or {}), default=str))
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raw.setdefault("model", {}).setdefault("name_or_path", _model_name(model))
    elif model is not None:
        raw.setdefault("model", {})["name_or_path"] = str(model)
    if data:
        unknown = [k for k in data if k not in DATA_ROLES]
        if unknown:
            raise InputError(f"data: unknown role(s) {unknown}; roles are {', '.join(DATA_ROLES)}")
        raw.setdefault("data", {})
        for role, value in data.items():
            raw["data"][role] = _data_block(role, value, raw["data"].get(role))
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    raw.setdefault("output_dir", str(Path("runs") / str(raw.get("name", "run"))))
    raw = apply_overrides(raw, list(overrides))
    return parse_recipe(raw, source="tandem.train recipe", overrides=list(overrides))


def train(recipe: Recipe | Mapping | str | os.PathLike | None = None, *, model=None, tokenizer=None,
          data: Mapping[str, Any] | None = None, callbacks: Iterable[Callback] = (), output_dir=None,
          overrides: Sequence[str] = (), resume: bool = False, overwrite: bool = False,
          allow_changes: Sequence[str] = (), progress: bool | None = None,
          fork_from: str | os.PathLike | None = None) -> Run:
    """Train a recipe; returns the :class:`Run` (see the module docstring). ``overrides``: ``--set`` items
    (``"optimizer.lr=1e-5"``); ``resume``/``overwrite``/``allow_changes``/``fork_from``: as ``tandem train``'s flags."""
    from tandem.pipelines.train import train as run_train

    with user_errors(output_dir):
        r = resolve_recipe(recipe, model, data, overrides, output_dir)
    with user_errors(r.output_dir):
        if isinstance(model, (str, os.PathLike)):
            model = None  # a path: the recipe's model.name_or_path, loaded as the CLI loads it
        if isinstance(tokenizer, (str, os.PathLike)):
            from tandem.models import load_tokenizer

            tokenizer = load_tokenizer(str(tokenizer))
        elif tokenizer is None and model is not None:
            raise InputError("model: a model object needs its tokenizer= too")
        summary = run_train(r, resume=resume, overwrite=overwrite, progress=progress,
                            allow_changes=list(allow_changes), model=model, tokenizer=tokenizer, callbacks=callbacks,
                            fork_from=fork_from)
    return Run(Path(r.output_dir), summary)


def compare(recipe: str | os.PathLike, methods: Sequence[str] = ("sequential", "hbat"), seeds: Sequence[int] = (0,),
            out: str | os.PathLike = "runs/compare", overrides: Sequence[str] = (), resume: bool = False,
            overwrite: bool = False, x: str | None = None, y: str | None = None, base: bool = True) -> list[dict]:
    """``tandem compare``: every method x seed trained on the recipe; returns the table rows (base model first)."""
    from tandem.pipelines.compare import compare as run_compare

    with user_errors(out):
        return run_compare(Path(recipe), list(methods), list(seeds), Path(out), list(overrides), resume, x, y,
                           overwrite=overwrite, base=base)


def evaluate(target: str | os.PathLike, recipe: str | os.PathLike | None = None, metrics: Sequence[str] | None = None,
             temperatures: Sequence[float] | None = None, overrides: Sequence[str] = (),
             out: str | os.PathLike | None = None) -> dict:
    """``tandem eval``: a recipe (its run's ``final/``) or a run/model directory, with the recipe's eval block (or
    ``metrics``); returns ``results.json`` as a dict (written to ``out``, default ``RUN/eval``)."""
    from tandem.pipelines.evaluate import eval_into, eval_target

    with user_errors(out):
        t = eval_target(Path(target), Path(recipe) if recipe is not None else None, list(overrides))
        ms = list(metrics) if metrics else t.recipe.eval.metrics
        if not ms:
            raise InputError("no metrics: pass metrics=[...] (--metrics) or set eval.metrics in the recipe")
        temps = t.recipe.eval.temperatures if temperatures is None else list(temperatures)
        out_dir = Path(out) if out is not None else t.run_dir / "eval"
        res = eval_into(t.model_dir, t.recipe.eval, out_dir, ms, temps)
    return {**res, "out": str(out_dir)}


def merge(base: str | os.PathLike, tuned: str | os.PathLike, out: str | os.PathLike, *, alpha: float | None = None,
          alphas: Sequence[float] | None = None, groups: str = "block3", head_alpha: float | None = None,
          mergekit_config: str | os.PathLike | None = None, overwrite: bool = False, extrapolate: bool = False) -> dict:
    """``tandem merge``: theta = (1 - alpha) * base + alpha * tuned (per layer group with ``alphas``); returns the
    merge record (groups, alphas, head alpha)."""
    from tandem.pipelines.merge import merge_models

    with user_errors(out):
        return merge_models(str(base), str(tuned), Path(out), alpha=alpha, alphas=list(alphas) if alphas else None,
                            groups=groups, head_alpha=head_alpha,
                            mergekit_config=Path(mergekit_config) if mergekit_config else None, overwrite=overwrite,
                            extrapolate=extrapolate)


def probe(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike = "runs/probe", progress=None,
          **settings) -> dict:
    """``tandem probe entanglement``: per-pair gradient entanglement of ``model`` on the preference pairs of ``data``;
    ``settings``: the fields of :class:`tandem.pipelines.probe.ProbeSettings` (pairs, params, max_length, ...).
    ``progress``: a ``rich.progress.Progress`` to show the passes on (default: none). Returns the summary (also
    ``OUT/summary.json``)."""
    from tandem.io.metrics import progress_bar
    from tandem.pipelines.probe import ProbeSettings, entanglement

    with user_errors(out):
        s = ProbeSettings(model=str(model), data=str(data), out=Path(out), **settings)
        if progress is not None:
            return entanglement(s, progress)
        with progress_bar(False) as prog:
            return entanglement(s, prog)


__all__ = ["Callback", "InputError", "Recipe", "Run", "TandemError", "compare", "evaluate", "merge", "probe", "train"]
