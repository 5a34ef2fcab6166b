"""The model card (``README.md``) of a saved model, through ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard`.

:class:`CardInfo` is what a card says about a run: base model, method, training data (with licences when known),
the recipe, the final validation metrics and the stages. :func:`card_info` builds one from a resolved recipe dict
(``Recipe.model_dump(mode="json")``) and a run summary (``summary.json``); :func:`render_card` turns it into a
``ModelCard`` whose metadata the Hub reads (``base_model``, ``library_name``, ``tags``, ``datasets``,
``pipeline_tag``).

Licences are known for the data sets shipped in ``shared/data`` (see :data:`KNOWN_LICENCES`) and for a few
Hub data sets; anything else reads "see source" (a data source may also carry its own ``licence``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Literal

import yaml

from tandem.models.resolve import looks_local

ModelKind = Literal["causal-lm", "reward"]
UNKNOWN_LICENCE = "see source"

# (pattern on the source path or Hub id, licence). First match wins: specific names before generic ones.
KNOWN_LICENCES: tuple[tuple[str, str], ...] = (
    (r"hh-rlhf", "MIT (Anthropic HH-RLHF)"),
    (r"alpaca_eval", "CC BY-NC 4.0 (AlpacaEval data; non-commercial)"),
    (r"seed_tasks", "Apache-2.0 (Stanford Alpaca seed tasks)"),
    (r"alpaca", "CC BY-NC 4.0 (Stanford Alpaca data; non-commercial)"),
    (r"tldr|tl;dr", "CC BY 4.0 (Reddit TL;DR, Webis-TLDR-17, OpenAI-filtered)"),
)


def licence_of(source: str) -> str:
    """The licence of a data source when tandem knows it (shipped sets, a few Hub sets), else ``"see source"``."""
    s = source.lower()
    return next((lic for pat, lic in KNOWN_LICENCES if re.search(pat, s)), UNKNOWN_LICENCE)


@dataclass(frozen=True)
class DataSource:
    role: str  # sft | preference | reward | eval ...
    source: str  # file path or Hub id
    split: str = "train"
    licence: str | None = None  # None -> licence_of(source)

    @property
    def licence_text(self) -> str:
        return self.licence or licence_of(self.source)


@dataclass
class CardInfo:
    """What the card of a trained model says. Every field is optional; missing ones are left out of the card."""

    name: str | None = None
    base_model: str | None = None
    method: str | None = None
    datasets: list[DataSource] = field(default_factory=list)
    recipe: dict | None = None  # the resolved recipe, printed as a YAML block
    metrics: dict[str, float] = field(default_factory=dict)  # final validation metrics
    stages: list[dict] = field(default_factory=list)  # [{name, role, examples, steps}] from summary["stages"]
    tags: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "CardInfo":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"model card info: unknown field(s) {bad}; known: {sorted(known)}")
        d = dict(d)
        d["datasets"] = [x if isinstance(x, DataSource) else DataSource(**x) for x in d.get("datasets") or []]
        return cls(**d)


def final_val(summary: dict) -> dict:
    """The final model's validation metrics: ``summary["final_val"]``, else (a summary still being written) those of
    the selected stage, else of the last stage that has some."""
    if summary.get("final_val"):
        return dict(summary["final_val"])
    stages = summary.get("stages") or []
    chosen = next((s for s in stages if s.get("name") == summary.get("selected_stage") and s.get("val")), None)
    chosen = chosen or next((s for s in reversed(stages) if s.get("val")), None)
    return dict(chosen["val"]) if chosen else {}


#: recipe blocks a training run never reads (other commands do): left out of the card.
NOT_TRAINING = ("eval", "tax")


def used_blocks(recipe: dict, summary: dict | None = None) -> dict:
    """The recipe as the card prints it: only the blocks the run used (no ``eval``/``tax``, no unused ``hbat``,
    ``probe``, ``hub``, ``regularizer``, data or objective roles the stages did not train)."""
    from tandem.schedules.methods import METHODS

    if not recipe:
        return {}
    out = {k: v for k, v in recipe.items() if k not in NOT_TRAINING and v is not None}
    method = METHODS.get(str((recipe.get("schedule") or {}).get("method")))
    roles = {s.get("role") for s in (summary or {}).get("stages") or []} - {None}
    if method is not None:
        roles |= {method.aux_role} - {None}
        if not (method.regularizer or method.aux_role or method.alternate or (out.get("hbat") or {}).get("final") == "best"):
            out.pop("hbat", None)
    if roles:
        data_roles = {"preference" if r == "reward" else r for r in roles}
        objectives = {k: v for k, v in (out.get("objectives") or {}).items()
                      if k in roles or k == (method.preference_objective if method else None)}
        out.pop("objectives", None)
        if objectives:
            out["objectives"] = objectives
        data = dict(out.get("data") or {})
        for key in ("sft", "preference", "pretrain"):
            if key not in data_roles or data.get(key) is None:
                data.pop(key, None)
        data["val"] = {k: v for k, v in (data.get("val") or {}).items() if k in data_roles}
        out["data"] = {k: v for k, v in data.items() if v not in ({}, None)}
    if not (out.get("probe") or {}).get("every"):
        out.pop("probe", None)
    if not (out.get("hub") or {}).get("push"):
        out.pop("hub", None)
    return out


def card_info(recipe: dict | None = None, summary: dict | None = None, **extra) -> CardInfo:
    """A :class:`CardInfo` from a resolved recipe dict (``Recipe.model_dump(mode="json")``) and a run summary
    (``summary.json``: ``method``, ``stages``, ``final_val``); ``extra`` fields override."""
    from tandem.io.secrets import redact_value

    recipe, summary = redact_value("", recipe or {}), summary or {}  # API keys and URL passwords never reach a card
    data = recipe.get("data") or {}
    sources = [DataSource(role=role, source=str(src["source"]), split=str(src.get("split") or "train"),
                          licence=src.get("licence"))
               for role in ("sft", "preference") if isinstance(src := data.get(role), dict) and src.get("source")]
    ev = (recipe.get("eval") or {}).get("data")
    if isinstance(ev, dict) and ev.get("source"):
        sources.append(DataSource(role="eval", source=str(ev["source"]), split=str(ev.get("split") or "train")))
    method = summary.get("method") or (recipe.get("schedule") or {}).get("method")
    info = CardInfo(
        name=summary.get("name") or recipe.get("name"),
        base_model=(recipe.get("model") or {}).get("name_or_path"),
        method=method,
        datasets=sources,
        recipe=used_blocks(recipe, summary) or None,
        metrics={k: float(v) for k, v in final_val(summary).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)},
        stages=[{k: s.get(k) for k in ("name", "role", "examples", "steps")} for s in summary.get("stages") or []],
    )
    for k, v in extra.items():
        if k not in {f.name for f in fields(CardInfo)}:
            raise ValueError(f"card_info: unknown field {k!r}")
        setattr(info, k, v)
    return info


def _hub_id(name: str | None) -> str | None:
    return name if name and not looks_local(name) else None


def origin_of(name: str | None, depth: int = 3) -> str | None:
    """The Hub id a base model comes from: the name itself when it is one, else what a local model folder names
    (its model card's ``base_model``, else ``_name_or_path`` in ``config.json`` when that is a Hub id; a run
    directory's ``final/``); None when nothing names one."""
    import json
    from pathlib import Path

    if not name:
        return None
    if _hub_id(name):
        return name
    p = Path(name).expanduser()
    if depth <= 0 or not p.is_dir():
        return None
    if (p / "final").is_dir() and not (p / "config.json").exists():
        p = p / "final"
    readme = p / "README.md"
    if readme.is_file():
        m = re.match(r"^---\n(.*?)\n---", readme.read_text(encoding="utf-8", errors="replace"), re.S)
        meta = yaml.safe_load(m.group(1)) if m else None
        base = meta.get("base_model") if isinstance(meta, dict) else None
        if isinstance(base, list):
            base = base[0] if base else None
        if isinstance(base, str) and base:
            return origin_of(base, depth - 1)
    for cfg_name in ("config.json", "adapter_config.json"):
        cfg = p / cfg_name
        if cfg.is_file():
            try:
                d = json.loads(cfg.read_text())
            except ValueError:
                continue
            ref = d.get("_name_or_path") or d.get("base_model_name_or_path")
            if isinstance(ref, str) and ref and Path(ref).expanduser().resolve() != p.resolve():
                return origin_of(ref, depth - 1)
    return None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _load_snippet(kind: ModelKind, adapter: bool) -> str:
    if kind == "reward":
        cls = "AutoPeftModelForSequenceClassification" if adapter else "AutoModelForSequenceClassification"
        lib = "peft" if adapter else "transformers"
        use = ('inputs = tok("Human: hi\\n\\nAssistant: hello", return_tensors="pt")\n'
               "score = model(**inputs).logits[0, 0]  # one scalar reward")
    else:
        cls = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
        lib = "peft" if adapter else "transformers"
        use = ('inputs = tok.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True,\n'
               '                              return_tensors="pt", return_dict=True)\n'
               "out = model.generate(**inputs, max_new_tokens=64)")
    return "\n".join([
        "```python",
        f"from {lib} import {cls}",
        "from transformers import AutoTokenizer",
        "",
        'model_id = "path/to/final"  # or the Hub repo this card belongs to',
        f"model = {cls}.from_pretrained(model_id)",
        "tok = AutoTokenizer.from_pretrained(model_id)",
        use,
        "```",
    ])


def render_card(info: CardInfo | None, kind: ModelKind, adapter: bool, base_model: str | None = None):
    """The :class:`huggingface_hub.ModelCard` of a saved model. ``adapter``: the folder is a peft LoRA adapter;
    ``base_model``: the base named by the saved files when ``info`` has none."""
    from huggingface_hub import ModelCard, ModelCardData

    from tandem.version import __version__

    info = info or CardInfo()
    base = info.base_model or base_model
    tags = ["tandem", *(["lora"] if adapter else []), *(["reward-model"] if kind == "reward" else [])]
    if info.method:
        tags.append(info.method)
    tags += [t for t in info.tags if t not in tags]
    hub_sets = [d.source for d in info.datasets if _hub_id(d.source)]
    data = ModelCardData(
        base_model=origin_of(base),
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-classification" if kind == "reward" else "text-generation",
        tags=tags,
        datasets=hub_sets or None,
        model_name=info.name,
    )
    what = ("a reward model (sequence classifier with one output: the scalar reward)" if kind == "reward"
            else "a causal language model")
    form = "a LoRA adapter (peft)" if adapter else "full weights (safetensors)"
    lines = [f"# {info.name or 'tandem model'}", "",
             f"This is {what}, saved as {form}, trained with tandem {__version__}"
             + (f" using the `{info.method}` method." if info.method else "."), ""]
    lines += ["## Base model", "", f"`{base}`" if base else "unknown", ""]
    if base and not _hub_id(base):
        lines += ["The base model is a local path: to load this adapter elsewhere, make the base available at "
                  "that path or edit `base_model_name_or_path` in `adapter_config.json`." if adapter
                  else "The base model was a local path.", ""]
    lines += ["## How to load", "", _load_snippet(kind, adapter), ""]
    if info.datasets:
        lines += ["## Training data", "", "| role | source | split | licence |", "|---|---|---|---|"]
        lines += [f"| {d.role} | `{d.source}` | {d.split} | {d.licence_text} |" for d in info.datasets]
        if any("NC" in d.licence_text for d in info.datasets):
            lines += ["", "Some training data is licensed for non-commercial use only; check it before any other use."]
        lines.append("")
    if info.stages:
        lines += ["## Training stages", "", "| stage | role | examples | optimizer steps |", "|---|---|---:|---:|"]
        lines += [f"| {s.get('name')} | {s.get('role')} | {_fmt(s.get('examples'))} | {_fmt(s.get('steps'))} |"
                  for s in info.stages]
        lines.append("")
    if info.metrics:
        lines += ["## Final validation metrics", "", "| metric | value |", "|---|---:|"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sorted(info.metrics.items())]
        lines.append("")
    if info.recipe:
        lines += ["## Recipe", "", "The resolved recipe of the run (`tandem train` reads it as is):", "", "```yaml",
                  yaml.safe_dump(info.recipe, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Framework versions", "", *_versions(), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n")


def _versions() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    from tandem.version import __version__

    out = [f"- tandem {__version__}"]
    for pkg in ("transformers", "peft", "torch", "accelerate"):
        try:
            out.append(f"- {pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return out
