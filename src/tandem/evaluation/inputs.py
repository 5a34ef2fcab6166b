"""Inputs named by a recipe's ``eval`` block: prompts with references, baseline outputs, held-out texts, MC rows."""

from __future__ import annotations

from pathlib import Path

TEXT_FIELDS = ("text", "output", "content", "post", "instruction")


def read_texts(path: str) -> list[str]:
    """Texts of a file: JSONL/JSON(.gz) records (the first of the fields text, output, content, post, instruction
    that a record has), else plain text split at blank lines."""
    p = Path(path)
    if p.suffix in (".jsonl", ".gz", ".json"):
        from tandem.data.readers import read_records

        return [next((r[k] for k in TEXT_FIELDS if r.get(k)), "") for r in read_records(str(p))]
    return [t for t in p.read_text().split("\n\n") if t.strip()]


def eval_inputs(cfg) -> dict:
    """Prompts, references, baseline, held-out texts, MC rows and preference pairs named by a recipe's eval block."""
    from tandem.data.formats import load_source
    from tandem.data.types import SFTExample
    from tandem.evaluation.metrics import load_mc_rows

    out: dict = {}
    if cfg.data is not None:
        examples, _ = load_source(cfg.data)
        out["prompts"] = [e.prompt for e in examples]
        out["references"] = [e.response if isinstance(e, SFTExample) else e.chosen for e in examples]
        if examples and all("check" in e.meta for e in examples):  # rows of `tandem conflict make`
            out["checks"] = [{"family": str(e.meta.get("family", "")), "check": e.meta["check"]} for e in examples]
    if cfg.baseline:
        out["baseline"] = read_texts(cfg.baseline)[: len(out.get("prompts", []))]
    if cfg.heldout_text:
        out["heldout_texts"] = read_texts(cfg.heldout_text)
    if cfg.mc:
        out["mc_rows"] = load_mc_rows(cfg.mc)
    if cfg.pairs:
        from tandem.data.formats import load_examples

        out["pairs"], _ = load_examples(cfg.pairs, limit=cfg.pairs_limit, role="preference")
    return out
