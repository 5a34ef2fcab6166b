"""``tandem push RUN REPO``: upload a run's ``final/`` (model card ``README.md`` included) to a Hugging Face Hub repo.

Through ``huggingface_hub``: ``HfApi(endpoint).create_repo(exist_ok=True)``, ``create_branch`` for a revision other
than ``main``, then one ``upload_folder`` commit. The token is ``token``, else ``HF_TOKEN`` or the cached login
(``hf auth login``); the endpoint is ``endpoint``, else ``HF_ENDPOINT``, else the public Hub.

A LoRA reward model's ``final/`` names itself as the adapter's base (see :mod:`tandem.models.save`); the pushed
``adapter_config.json`` names the repo instead, so ``AutoPeftModelForSequenceClassification.from_pretrained(REPO)``
works from the Hub. Files are staged next to ``final/`` as hard links (a copy across file systems), never
modified in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tandem")

DEFAULT_ENDPOINT = "https://huggingface.co"


class PushError(ValueError):
    """A push that cannot go on; the message is the one line the user needs."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    url: str  # the repo's page
    commit_url: str
    revision: str
    files: list[str]
    warnings: list[str] = field(default_factory=list)


def model_folder(run: str | Path) -> Path:
    """The folder to push: ``RUN/final`` of a run dir, or a model dir itself (``config.json`` or
    ``adapter_config.json``)."""
    from tandem.models.resolve import is_model_dir

    p = Path(run).expanduser()
    if not p.exists():
        raise PushError(f"{p}: not found; give a run dir (with final/) or a model dir")
    if is_model_dir(p):
        return p
    if (p / "final").is_dir() and is_model_dir(p / "final"):
        return p / "final"
    raise PushError(f"{p}: no final/ model here (has the run finished? `tandem train` writes final/ at its end)")


def _stage(folder: Path, repo_id: str) -> tuple[Path, list[str]]:
    """A staging copy (hard links) of ``folder`` with a portable ``adapter_config.json``; notes for the user."""
    notes = []
    tmp = Path(tempfile.mkdtemp(prefix=".push-", dir=folder.parent))
    for src in sorted(folder.rglob("*")):
        dst = tmp / src.relative_to(folder)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    cfg_path = tmp / "adapter_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        base = str(cfg.get("base_model_name_or_path") or "")
        if base and Path(base).expanduser().resolve() == folder.resolve():
            cfg["base_model_name_or_path"] = repo_id  # the base classifier travels in the same repo
            cfg_path.unlink()  # a hard link: never write through it
            cfg_path.write_text(json.dumps(cfg, indent=2))
        elif base and Path(base).is_absolute():
            notes.append(f"the adapter's base model is a local path ({base}): others cannot load it from the Hub; "
                         "push the base model too and set base_model_name_or_path, or push final/merged")
    if not (tmp / "README.md").is_file():
        notes.append("no README.md model card in the folder (runs of older tandem versions): the repo has none")
    return tmp, notes


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of the HTTP clients huggingface_hub may use (httpx2 in 2.x, httpx in 1.x)."""
    import importlib
    import importlib.util

    mods = [importlib.import_module(m) for m in ("httpx2", "httpx") if importlib.util.find_spec(m) is not None]
    return tuple(m.TransportError for m in mods) + (ConnectionError,)


def _http_error(e, endpoint: str, repo_id: str) -> PushError:
    status = e.response.status_code if e.response is not None else None
    if status == 401:
        return PushError(f"push to {endpoint}: not authenticated (HTTP 401); pass --token, set HF_TOKEN or run "
                         "`hf auth login`")
    if status == 403:
        return PushError(f"push to {endpoint}: the token may not write to {repo_id} (HTTP 403); use a token with "
                         "write access to that namespace")
    server = e.server_message or str(e).splitlines()[0]
    return PushError(f"push to {endpoint}/{repo_id}: HTTP {status}: {server}")


def push(run: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         token: str | None = None, endpoint: str | None = None, commit_message: str | None = None) -> PushResult:
    """Upload ``run``'s ``final/`` (or a model dir) to ``repo_id``; see the module docstring."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = model_folder(run)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PushError(f"repo id {repo_id!r}: {str(e).splitlines()[0]} (expected 'name' or 'namespace/name')") from e
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    staged, notes = _stage(folder, repo_id)
    try:
        files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
        repo = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo.repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=staged, repo_id=repo.repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {folder.parent.name or folder.name} (tandem)")
    except HfHubHTTPError as e:
        raise _http_error(e, endpoint, repo_id) from e
    except _transport_errors() as e:
        raise PushError(f"push: cannot reach {endpoint} ({type(e).__name__}: {e}); check --endpoint / HF_ENDPOINT "
                        "and the network") from e
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    for n in notes:
        log.warning(n)
    return PushResult(repo_id=repo.repo_id, url=str(repo), commit_url=info.commit_url, revision=revision or "main",
                      files=files, warnings=notes)
