"""``tandem merge``: interpolate a base and a tuned checkpoint and save a normal HF model.

Mounted by ``tandem.cli.main``; also usable alone: ``python -m tandem.cli.merge_cmd --help``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import console, make_app, parse_list, user_errors
from tandem.cli.common import fail as _fail

app = make_app()


@app.command("merge")
def merge(
    base: str = typer.Argument(..., help="theta_0: model before preference training (dir, Hub id or LoRA adapter dir)."),
    tuned: str = typer.Argument(..., help="theta_1: model after preference training (dir, Hub id or LoRA adapter dir)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Global weight of the TUNED model (Wise-FT)."),
    alphas: Optional[str] = typer.Option(None, "--alphas", help="One tuned-model weight per group: '0.2,0.5,0.8'."),
    groups: str = typer.Option("block3", "--groups", help="'blockK' (K contiguous groups), 'layerwise', or ranges '0-9,10-19,20-29'."),
    head_alpha: Optional[float] = typer.Option(None, "--head-alpha", help="Weight for final norm + LM head (default: mean of group alphas)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dir for the merged model."),
    mergekit_config: Optional[Path] = typer.Option(None, "--mergekit-config", help="Also write the equivalent mergekit YAML here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier merge in OUT (only a directory tandem wrote)."),
) -> None:
    """Merge two checkpoints: theta = (1 - alpha) * base + alpha * tuned, per tensor.

    alpha is the weight of the TUNED model (1 = tuned, 0 = base); some tools use the opposite.

    Embeddings follow the first group; final norm and LM head follow --head-alpha.

    Uneven blockK groups: the first (layers % K) groups get one extra layer.

    Examples:

      tandem merge models/sft runs/dpo/final --alpha 0.5 -o merged/wise-0.5

      tandem merge models/sft runs/dpo-lora/final --alphas 0.2,0.5,0.8 --groups block3 -o merged/hma --mergekit-config merged/hma.yaml
    """
    if (alpha is None) == (alphas is None):
        _fail("give exactly one of --alpha (global) or --alphas (one per group)")
    alpha_list = parse_list("--alphas", alphas, float, "0.2,0.5,0.8") if alphas is not None else None
    given = [("--alpha", alpha)] + [("--alphas", a) for a in alpha_list or []] + [("--head-alpha", head_alpha)]
    for flag, a in given:
        if a is not None and not math.isfinite(a):
            _fail(f"{flag} {a}: an alpha must be a finite number (1 = tuned, 0 = base)")
        if a is not None and not 0.0 <= a <= 1.0:
            console.print(f"[yellow]warning:[/] alpha {a} is outside [0, 1]: extrapolating")
    with user_errors(out):
        from tandem.io.rundir import check_run_dir, is_run_dir, open_run_dir
        from tandem.merging.loading import merge_checkpoints
        from tandem.models import check_exists

        check_exists(base, "base model")
        check_exists(tuned, "tuned model")
        check_run_dir(out, resume=False, overwrite=True)  # a file or a directory tandem did not write: refused
        if is_run_dir(out) and not overwrite:
            _fail(f"{out} holds an earlier tandem output; pass --overwrite to replace it or choose another --out")
        fresh = not out.exists()
        try:
            with open_run_dir(out, resume=False, overwrite=overwrite, command="merge"):
                record = merge_checkpoints(base, tuned, out, group_spec=groups, alpha=alpha, alphas=alpha_list,
                                           head_alpha=head_alpha, mergekit_config=mergekit_config)
        except KeyError as e:
            _fail(f"{base} and {tuned} do not hold the same tensors (missing {e}); merge two checkpoints of one model")
        finally:
            if fresh and out.is_dir() and not (out / "config.json").exists():
                shutil.rmtree(out)  # created by this failed merge: leave nothing behind
    console.print(f"[green]merged[/] groups {record['groups']} alphas {record['alphas']} "
                  f"head {record['head_alpha']:.4g} -> {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
