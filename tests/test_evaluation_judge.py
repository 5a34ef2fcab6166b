"""tandem.evaluation.judge against a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tandem.evaluation.judge import JudgeConfig, JudgeError, judge_pairs, parse_verdict

SECRET = "sk-test-DO-NOT-LEAK-1234567890"


class FakeJudge:
    """Prefers the reply containing "good"; answers "A" whenever both contain "biased" (pure position bias);
    says tie otherwise. ``script`` holds forced replies for the first requests: "garbage" or an HTTP status."""

    def __init__(self):
        self.count = 0
        self.auth: list[str | None] = []
        self.script: list = []
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.count += 1
                    judge.auth.append(self.headers.get("Authorization"))
                    forced = judge.script.pop(0) if judge.script else None
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if isinstance(forced, int):
                    return self._send(forced, {"error": "boom"})
                if forced == "garbage":
                    return self._send(200, {"choices": [{"message": {"content": "I like both of them a lot!"}}]})
                content = body["messages"][0]["content"]
                a = content.split("Reply A:\n", 1)[1].split("\n\nReply B:\n", 1)[0]
                b = content.split("Reply B:\n", 1)[1].split("\n\nDecide", 1)[0]
                if "biased" in a and "biased" in b:
                    v = "A"
                elif ("good" in a) != ("good" in b):
                    v = "A" if "good" in a else "B"
                else:
                    v = "tie"
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": f"Reason.\nPreferred: {v}"}}]})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = FakeJudge()
    yield s
    s.close()


PROMPTS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "Tell me a joke."}],
    "Plain string prompt",
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More?"}],
    [{"role": "user", "content": "What is 2+2?"}],
]
A = ["a good answer", "meh", "neutral one", "biased one", "good four"]
B = ["a poor answer", "a good joke", "neutral two", "biased two", "4, good"]
# pair 0: A wins both orders -> win; 1: loss; 2: tie/tie -> tie; 3: position bias (A, A) -> tie; 4: tie


def _cfg(url, **kw):
    return JudgeConfig(model="judge-1", base_url=url, api_key_env="TANDEM_TEST_JUDGE_KEY", backoff=0.01, **kw)


def test_judge_win_rate_retries_cache_and_no_key_leak(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_TEST_JUDGE_KEY", SECRET)
    server.script = ["garbage", 500]  # the first two requests fail and are retried
    cache = tmp_path / "out" / "judge_cache.jsonl"
    res = judge_pairs(PROMPTS, A, B, _cfg(server.url, max_workers=3), cache_path=cache)
    assert (res["wins"], res["losses"], res["ties"], res["n"]) == (1, 1, 3, 5)
    assert res["win_rate"] == pytest.approx(1 / (5 - 3))
    assert [p["verdicts"] for p in res["per_pair"]] == [["A", "B"], ["B", "A"], ["tie", "tie"], ["A", "A"], ["tie", "tie"]]
    assert [p["score"] for p in res["per_pair"]] == [1.0, 0.0, 0.5, 0.5, 0.5]
    assert res["mean_score"] == pytest.approx(2.5 / 5)
    assert server.count == 10 + 2  # 5 pairs x 2 orders + 2 retried requests
    assert server.auth[-1] == f"Bearer {SECRET}"  # the key is sent ...

    # ... but never written: grep every file under the output dir (cache included)
    (tmp_path / "out" / "result.json").write_text(json.dumps(res))
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert cache in files
    for f in files:
        assert SECRET not in f.read_text()
        assert "sk-test" not in f.read_text()
    assert "TANDEM_TEST_JUDGE_KEY" == res["judge"]["api_key_env"]

    # a second run reuses the cached verdicts: no request at all
    before = server.count
    again = judge_pairs(PROMPTS, A, B, _cfg(server.url, max_workers=3), cache_path=cache)
    assert server.count == before
    assert again["per_pair"] == res["per_pair"]
    # a different judge model is a different cache key
    judge_pairs(PROMPTS[:1], A[:1], B[:1], JudgeConfig(model="judge-2", base_url=server.url, backoff=0.01), cache_path=cache)
    assert server.count == before + 2


def test_summarization_template_and_all_ties(server):
    cfg = JudgeConfig(model="j", base_url=server.url, task="summarization")
    assert "Summary A:" in cfg.template_text() and "Preferred: tie" in cfg.template_text()
    with pytest.raises(ValueError, match="task must be one of"):
        JudgeConfig(model="j", task="poetry").template_text()
    # the fake server parses "Reply A/B", so use a custom template with the same placeholders
    custom = "Post:\n{prompt}\n\nReply A:\n{response_a}\n\nReply B:\n{response_b}\n\nDecide. Preferred: A, B or tie"
    res = judge_pairs(["post"], ["x"], ["y"], JudgeConfig(model="j", base_url=server.url, template=custom))
    assert {k: res[k] for k in ("win_rate", "wins", "losses", "ties", "n")} == {
        "win_rate": 0.5, "wins": 0, "losses": 0, "ties": 1, "n": 1}


def test_missing_endpoint_gives_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeError, match=rf"cannot reach the judge endpoint {url}/chat/completions"):
        judge_pairs(["p"], ["a"], ["b"], _cfg(url, max_retries=1))


def test_persistent_garbage_and_http_errors(server, monkeypatch):
    monkeypatch.setenv("TANDEM_TEST_JUDGE_KEY", SECRET)
    server.script = ["garbage"] * 10
    with pytest.raises(JudgeError, match=rf"{server.url}/chat/completions gave no valid verdict after 3 attempts") as e:
        judge_pairs(["p"], ["a"], ["b"], _cfg(server.url, max_retries=2, max_workers=1))
    assert SECRET not in str(e.value)
    server.script = [401] * 4
    with pytest.raises(JudgeError, match=r"HTTP 401.*\$TANDEM_TEST_JUDGE_KEY") as e:
        judge_pairs(["p"], ["a"], ["b"], _cfg(server.url, max_retries=2, max_workers=1))
    assert SECRET not in str(e.value)
    wrong = server.url.replace("/v1", "/nope")
    with pytest.raises(JudgeError, match="HTTP 404"):
        judge_pairs(["p"], ["a"], ["b"], _cfg(wrong, max_retries=0))


def test_parse_verdict_is_strict():
    assert parse_verdict("Because.\nPreferred: A") == "A"
    assert parse_verdict("Because.\n\n**Preferred: b**\n") == "B"
    assert parse_verdict("x\nPreferred: TIE.") == "tie"
    assert parse_verdict("B") == "B"
    for bad in ["", "Preferred: A\nbut actually I am unsure", "Preferred: C", "Preferred: A or B", "A is better"]:
        with pytest.raises(ValueError):
            parse_verdict(bad)
