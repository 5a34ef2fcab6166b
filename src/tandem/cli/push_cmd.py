"""``tandem push``: upload a run's ``final/`` (with its model card) to a Hugging Face Hub repo.

Mounted by ``tandem.cli.main``; also usable alone: ``python -m tandem.cli.push_cmd --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tandem.cli.common import console, make_app, setup_logging, user_errors

app = make_app()


@app.command("push")
def push(
    run: Path = typer.Argument(..., help="Run dir (its final/ is pushed) or a model dir."),
    repo: str = typer.Argument(..., help="Hub repo id: 'name' (your namespace) or 'namespace/name'; created if missing."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private (an existing repo keeps its visibility)."),
    revision: Optional[str] = typer.Option(None, "--revision", "--branch", help="Branch to push to (created from main if missing); default main."),
    token: Optional[str] = typer.Option(None, "--token", help="Hub token with write access; default HF_TOKEN or the cached login (hf auth login)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Hub URL; default HF_ENDPOINT, else https://huggingface.co."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit message."),
) -> None:
    """Push RUN/final (model card README.md included) to the Hub repo REPO in one commit.

    Examples:

      tandem push runs/hbat me/smollm2-hbat --private

      tandem push runs/reward me/smollm2-rm --branch v1 --endpoint http://127.0.0.1:8080
    """
    setup_logging(False)  # the Hub client's request lines stay quiet
    with user_errors():
        from tandem.pipelines.push import push as run_push

        res = run_push(run, repo, private=private, revision=revision, token=token, endpoint=endpoint,
                       commit_message=message)
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True, highlight=False)
    console.print(f"pushed {len(res.files)} files to {res.url} (branch {res.revision}): {res.commit_url}",
                  soft_wrap=True, highlight=False)


if __name__ == "__main__":
    app()
