"""Secrets never reach a file or an error line: API keys pasted where an environment variable's *name* belongs, and
passwords in URLs (``https://user:key@host``).

:func:`looks_like_key` tells a key from a variable name; :func:`url_userinfo` finds the ``user:password@`` part of a
URL; :func:`redact` replaces both in any text (a recipe dump, a model card, an error line that echoes ``--set``).
The recipe refuses such values (``eval.judge.api_key_env``, ``eval.judge.base_url``); redaction is the second line
of defence for everything tandem writes.
"""

from __future__ import annotations

import re

REDACTED = "***"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# well-known key formats: OpenAI/Anthropic (sk-...), Hugging Face (hf_...), GitHub, GitLab, Slack, AWS, Google
_KEY = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{12,}|sk_[A-Za-z0-9]{16,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|"
                  r"github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{16,}|xox[abposr]-[A-Za-z0-9\-]{10,}|"
                  r"AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{30,})")
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"]+)@")


def looks_like_key(value: str) -> bool:
    """True when ``value`` is a secret rather than the name of an environment variable: a known key format, or
    not a variable name at all (``-``, ``.``, spaces), or a long mix of letters and digits no one names a variable."""
    v = value.strip()
    if _KEY.search(v):
        return True
    if not ENV_NAME.match(v):
        return len(v) >= 16
    mixed = any(c.islower() for c in v) and any(c.isupper() for c in v) and any(c.isdigit() for c in v)
    return len(v) >= 24 and mixed


def url_userinfo(url: str) -> str | None:
    """The ``user[:password]`` part of a URL, if any."""
    m = _USERINFO.search(url or "")
    return m.group("userinfo") if m else None


def redact(text: str) -> str:
    """``text`` with key-like tokens and URL passwords replaced by ``***``."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _KEY.sub(REDACTED, text)


def redact_value(field: str, value):
    """A recipe value with its secret removed: an ``api_key_env`` that is a key, a URL's user info."""
    if isinstance(value, str):
        if field.endswith("api_key_env") and looks_like_key(value):
            return REDACTED
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(f"{field}.{k}" if field else str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(field, v) for v in value]
    return value


__all__ = ["REDACTED", "looks_like_key", "redact", "redact_value", "url_userinfo"]
