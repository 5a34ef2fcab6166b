"""LLM-judge win rate through any OpenAI-compatible chat-completions endpoint (standard library only).

How a pair is judged (``response_a`` = the model under test, ``response_b`` = the baseline):

* The judge sees the pair twice, once as (A=a, B=b) and once swapped (A=b, B=a), to cancel position bias.
* Each order gives ``a`` a score of 1 (a preferred), 0.5 (tie) or 0 (b preferred); the pair's score is the
  mean of the two, so one of 0, 0.25, 0.5, 0.75, 1.
* The pair is a **win** if its score is > 0.5 (a wins in both orders, or wins one and ties the other), a
  **loss** if < 0.5, and a **tie** if exactly 0.5 (both ties, or each response wins in its favoured position:
  the judge only followed position).
* ``win_rate = wins / (n - ties)`` (0.5 when every pair is a tie); ``mean_score`` (the mean pair score,
  ties counted as half) is reported too.

The judge must end its reply with a line ``Preferred: A``, ``Preferred: B`` or ``Preferred: tie``. Anything
else is a malformed reply and is retried like a 5xx/timeout/connection error, with exponential backoff
(``backoff * 2**attempt`` seconds); after ``max_retries`` retries a :class:`JudgeError` names the URL.

Secrets: the API key is read from the environment variable named by ``JudgeConfig.api_key_env`` at request
time and only ever placed in the ``Authorization`` header. It is not stored in the config, not logged, not
part of any cache key, and not written to any file. Cache keys hash only the non-secret request parts.

Cache: one JSONL file (``{"key", "verdict", "reply"}`` per line), keyed per single-order judgment by the
sha256 of (base URL, judge model, template, rendered prompt, the two responses in that order, temperature,
max_tokens); cached judgments are reused without any request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tandem.evaluation.metrics import win_rate_from_counts

log = logging.getLogger(__name__)

SUMMARY_TEMPLATE = """You are comparing two short summaries of the same forum post.

Post:
{prompt}

Summary A:
{response_a}

Summary B:
{response_b}

Decide which summary captures the main points of the post more faithfully and concisely, leaving out \
details that do not matter. If neither is better, say tie.
Write one sentence explaining your choice. Then, on a final line of its own, write exactly one of:
Preferred: A
Preferred: B
Preferred: tie"""

DIALOGUE_TEMPLATE = """You are comparing two possible assistant replies to the same conversation.

Conversation:
{prompt}

Reply A:
{response_a}

Reply B:
{response_b}

Decide which reply is more helpful to the user: it should answer what was asked, be correct and clear, \
and avoid anything harmful. If neither is better, say tie.
Write one sentence explaining your choice. Then, on a final line of its own, write exactly one of:
Preferred: A
Preferred: B
Preferred: tie"""

TEMPLATES = {"summarization": SUMMARY_TEMPLATE, "dialogue": DIALOGUE_TEMPLATE}

_VERDICT = re.compile(r"^\**\s*(?:preferred\s*:\s*)?\**\s*[\"'`]?(a|b|tie)[\"'`]?\s*\**\s*\.?\s*$", re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge endpoint could not give a valid verdict (unreachable, HTTP error, or malformed replies)."""


class MalformedReply(ValueError):
    """A reply without a valid final verdict line."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask the judge. Holds the NAME of the API-key variable, never the key itself."""

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    task: str = "dialogue"  # "dialogue" | "summarization", or give `template`
    template: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 1.0
    max_workers: int = 4

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def template_text(self) -> str:
        if self.template is not None:
            return self.template
        if self.task not in TEMPLATES:
            raise ValueError(f"JudgeConfig.task must be one of {sorted(TEMPLATES)} (or give template=), got {self.task!r}")
        return TEMPLATES[self.task]


def parse_verdict(reply: str) -> str:
    """``"A"``, ``"B"`` or ``"tie"`` from the reply's last non-empty line, which must be ``Preferred: X``
    (or just ``X``; case, quotes, markdown bold and a final period are tolerated). Else :class:`MalformedReply`."""
    lines = [ln.strip() for ln in (reply or "").strip().splitlines() if ln.strip()]
    if not lines:
        raise MalformedReply("empty reply")
    m = _VERDICT.match(lines[-1])
    if not m:
        raise MalformedReply(f"last line is not 'Preferred: A|B|tie': {lines[-1][:200]!r}")
    v = m.group(1).lower()
    return "tie" if v == "tie" else v.upper()


def render_conversation(prompt) -> str:
    """A prompt (string or chat messages) as plain text for the judge."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in prompt)


def _key(cfg: JudgeConfig, template: str, prompt_text: str, first: str, second: str) -> str:
    blob = json.dumps(
        {
            "base_url": cfg.base_url.rstrip("/"),
            "model": cfg.model,
            "template": template,
            "prompt": prompt_text,
            "A": first,
            "B": second,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """Append-only JSONL of single-order judgments; thread-safe."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.lock = threading.Lock()
        self.data: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line from an interrupted run
                    if isinstance(row, dict) and "key" in row and row.get("verdict") in ("A", "B", "tie"):
                        self.data[row["key"]] = row

    def get(self, key: str) -> dict | None:
        with self.lock:
            return self.data.get(key)

    def put(self, key: str, verdict: str, reply: str) -> None:
        row = {"key": key, "verdict": verdict, "reply": reply}
        with self.lock:
            self.data[key] = row
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _post(cfg: JudgeConfig, content: str) -> str:
    """One chat-completions request; returns the message content. Raises urllib/socket errors as they come."""
    body = json.dumps(
        {
            "model": cfg.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
    ).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(cfg.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(cfg.url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=cfg.timeout) as resp:
        raw = resp.read()
    try:
        data = json.loads(raw)
        text = data["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
        raise MalformedReply(f"not an OpenAI chat-completions body: {raw[:200]!r}") from e
    if not isinstance(text, str):
        raise MalformedReply(f"message content is not a string: {text!r:.200}")
    return text


def ask_judge(cfg: JudgeConfig, content: str) -> tuple[str, str]:
    """(verdict, reply) for one rendered judge prompt, with retries (see the module docstring)."""
    last = ""
    for attempt in range(cfg.max_retries + 1):
        if attempt:
            time.sleep(cfg.backoff * 2 ** (attempt - 1))
        try:
            reply = _post(cfg, content)
            return parse_verdict(reply), reply
        except urllib.error.HTTPError as e:
            if e.code >= 500 or e.code == 429:
                last = f"HTTP {e.code} {e.reason}"
                log.warning("judge %s: %s (attempt %d/%d)", cfg.url, last, attempt + 1, cfg.max_retries + 1)
                continue
            hint = f"; is the API key in ${cfg.api_key_env} set and valid?" if e.code in (401, 403) else ""
            raise JudgeError(f"judge endpoint {cfg.url} answered HTTP {e.code} {e.reason}{hint}") from e
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            last = f"connection error: {reason}"
            log.warning("judge %s: %s (attempt %d/%d)", cfg.url, last, attempt + 1, cfg.max_retries + 1)
            if attempt == cfg.max_retries:
                raise JudgeError(
                    f"cannot reach the judge endpoint {cfg.url} ({reason}) after {cfg.max_retries + 1} attempts; "
                    "is the server running and the base URL right?"
                ) from e
        except MalformedReply as e:
            last = f"malformed reply: {e}"
            log.warning("judge %s: %s (attempt %d/%d)", cfg.url, last, attempt + 1, cfg.max_retries + 1)
    raise JudgeError(f"judge endpoint {cfg.url} gave no valid verdict after {cfg.max_retries + 1} attempts; last: {last}")


def _pair_score(v1: str, v2: str) -> float:
    """Score of response a: order 1 has a as "A", order 2 has a as "B"."""
    s1 = {"A": 1.0, "tie": 0.5, "B": 0.0}[v1]
    s2 = {"B": 1.0, "tie": 0.5, "A": 0.0}[v2]
    return (s1 + s2) / 2


def judge_pairs(
    prompts: list,
    responses_a: list[str],
    responses_b: list[str],
    config: JudgeConfig,
    cache_path: str | Path | None = None,
) -> dict:
    """Judge each (prompt, a, b) in both orders (see the module docstring for the rule).

    Returns ``{"win_rate", "wins", "losses", "ties", "n", "mean_score", "per_pair": [{"score", "verdicts"}],
    "judge": {non-secret config}}``; ``win_rate`` is that of ``responses_a`` over ``responses_b``.
    """
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(responses_a)} A, {len(responses_b)} B")
    template = config.template_text()
    cache = JudgeCache(cache_path)
    jobs = []  # (pair index, order, key, content)
    for i, (p, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
        text = render_conversation(p)
        for order, (first, second) in enumerate(((a, b), (b, a))):
            content = template.format(prompt=text, response_a=first, response_b=second)
            jobs.append((i, order, _key(config, template, text, first, second), content))

    def run(job) -> str:
        _, _, key, content = job
        hit = cache.get(key)
        if hit is not None:
            return hit["verdict"]
        verdict, reply = ask_judge(config, content)
        cache.put(key, verdict, reply)
        return verdict

    pool = ThreadPoolExecutor(max_workers=max(1, config.max_workers))
    try:
        verdicts = list(pool.map(run, jobs))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # fail fast: do not wait for queued pairs
        raise
    pool.shutdown()
    per_pair = []
    for i in range(len(prompts)):
        v1, v2 = verdicts[2 * i], verdicts[2 * i + 1]
        per_pair.append({"score": _pair_score(v1, v2), "verdicts": [v1, v2]})
    wins = sum(p["score"] > 0.5 for p in per_pair)
    losses = sum(p["score"] < 0.5 for p in per_pair)
    out = win_rate_from_counts(wins, losses, len(per_pair) - wins - losses)
    out["mean_score"] = sum(p["score"] for p in per_pair) / len(per_pair) if per_pair else 0.5
    out["per_pair"] = per_pair
    out["judge"] = {k: v for k, v in asdict(config).items() if k != "template"}
    return out
