"""Pairwise judges: the verdict from two orders, the local judges on the embedded model, the HTTP judge against
a real local server (retries, a cache that makes a rerun free and holds only valid answers, bad answers that
stop the run in one line, a key that is sent and never written nor sent in clear text to another host), and
the length-controlled win rate."""

from __future__ import annotations

import io
import json
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from dlma.errors import DLMAError
from dlma.judge import (
    ContrastJudge,
    HttpJudge,
    RlaifJudge,
    is_loopback,
    length_controlled,
    position_consistency,
    two_order_verdict,
)

SECRET = "sk-test-not-a-real-key-1234"


def test_two_orders_make_one_verdict():
    assert two_order_verdict(True, True) == "win" and two_order_verdict(False, False) == "lose"
    assert two_order_verdict(True, False) == "tie" and two_order_verdict(None, True) == "tie"


def answer(content) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class Server:
    """An OpenAI-compatible endpoint: answers (A) when option (A) holds the word 'good', else (B); the
    first `fail` requests get HTTP 429 (or `status`), the next ones the raw `bodies` in turn (bad answers:
    once they are used up, the server is fixed)."""

    def __init__(self, fail: int = 0, status: int = 429, bodies: list[bytes] = ()):
        self.requests, self.auth, self.bodies = [], [], list(bodies)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization"))
                if len(server.requests) <= fail:
                    self.send_response(status)
                    self.end_headers()
                    return
                prompt = body["messages"][0]["content"]
                option_a = prompt.split("(A) ")[1].split("\n(B)")[0]
                data = server.bodies.pop(0) if server.bodies else answer("A)" if "good" in option_a else "B)")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


ITEMS = [(["Is this good?"], "a good answer", "a bad answer"),
         (["And this?"], "a bad answer", "a good answer"),
         (["Both?"], "good", "good too")]


def test_http_judge_retries_caches_and_never_writes_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    server = Server(fail=2)
    try:
        judge = HttpJudge(server.url, "judge-model", tmp_path / "cache.jsonl", api_key_env="JUDGE_KEY",
                          backoff_s=0.01)
        rows = judge.judge(ITEMS)
        assert [r["verdict"] for r in rows] == ["win", "lose", "tie"]  # the third: each order picks (A)
        assert len(server.requests) == 2 + 6  # two 429s retried, then both orders of three items
        assert judge.requests == 8 and set(server.auth) == {f"Bearer {SECRET}"}
        assert server.requests[-1]["model"] == "judge-model" and position_consistency(rows) == pytest.approx(2 / 3)
        again = HttpJudge(server.url, "judge-model", tmp_path / "cache.jsonl", api_key_env="JUDGE_KEY")
        assert again.judge(ITEMS) == rows and again.requests == 0 and len(server.requests) == 8  # free rerun
        assert SECRET not in (tmp_path / "cache.jsonl").read_text()
        other = HttpJudge(server.url, "another-model", tmp_path / "cache.jsonl", api_key_env="JUDGE_KEY")
        other.judge(ITEMS[:1])
        assert other.requests == 2  # the cache is keyed by the model too
    finally:
        server.close()


def test_http_judge_gives_up_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    server = Server(fail=100, status=503)
    try:
        judge = HttpJudge(server.url, "m", tmp_path / "c.jsonl", api_key_env="NO_SUCH_KEY", retries=2, backoff_s=0)
        with pytest.raises(DLMAError, match=r"HTTP 503 after 3 attempt\(s\)"):
            judge.judge(ITEMS[:1])
        assert server.auth == [None] * 3  # no key set, none sent
    finally:
        server.close()
    dead = HttpJudge("http://127.0.0.1:9/v1", "m", tmp_path / "d.jsonl", retries=0)
    with pytest.raises(DLMAError, match="after 1 attempt"):
        dead.judge(ITEMS[:1])


def cached_rows(path) -> list[dict]:
    """The cache's rows, each of which must be a valid answer."""
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    assert all(isinstance(r["key"], str) and HttpJudge.valid(r["answer"]) for r in rows), rows
    return rows


BAD_ANSWERS = [  # what came back, and how the error names it
    (answer(None), "content None"),
    (answer(""), "content ''"),
    (answer(5), "content 5"),
    (answer(["A"]), "content ['A']"),
    (answer("I cannot decide"), "naming neither (A) nor (B): content 'I cannot decide'"),
    (b"{}", "not a chat-completions answer: '{}'"),
    (b'{"choices": []}', "not a chat-completions answer"),
    (b"null", "not a chat-completions answer: 'null'"),
    (b"<html>\nBad gateway\n</html>", "not a chat-completions answer: '<html>\\nBad gateway"),
]


@pytest.mark.parametrize(("body", "named"), BAD_ANSWERS)
def test_http_judge_retries_a_bad_answer_then_stops_in_one_line_and_never_caches_it(tmp_path, body, named):
    server = Server(bodies=[body] * 3)
    try:
        cache = tmp_path / "cache.jsonl"
        judge = HttpJudge(server.url, "judge-model", cache, api_key_env="NO_SUCH_KEY", answer_retries=2, backoff_s=0)
        with pytest.raises(DLMAError) as error:
            judge.judge(ITEMS[:1])
        message = str(error.value)
        assert "\n" not in message and named in message and "after 3 attempt(s)" in message
        assert f"judge {server.url}/chat/completions (model judge-model)" in message
        assert len(server.requests) == 3 and cached_rows(cache) == []  # retried twice, nothing cached
        again = HttpJudge(server.url, "judge-model", cache, api_key_env="NO_SUCH_KEY")  # the server is fixed now
        assert [r["verdict"] for r in again.judge(ITEMS[:1])] == ["win"] and again.requests == 2
        assert len(cached_rows(cache)) == 2
    finally:
        server.close()


def test_http_judge_asks_again_after_one_bad_answer(tmp_path):
    server = Server(bodies=[answer(None)])
    try:
        judge = HttpJudge(server.url, "m", tmp_path / "c.jsonl", api_key_env="NO_SUCH_KEY", backoff_s=0)
        assert [r["verdict"] for r in judge.judge(ITEMS[:1])] == ["win"]
        assert len(server.requests) == judge.requests == 3 and len(cached_rows(tmp_path / "c.jsonl")) == 2
    finally:
        server.close()


def test_http_judge_drops_cache_lines_that_are_not_valid_answers(tmp_path, capsys):
    server = Server()
    try:
        cache = tmp_path / "cache.jsonl"
        HttpJudge(server.url, "m", cache, api_key_env="NO_SUCH_KEY").judge(ITEMS[:1])
        first, second = cached_rows(cache)
        old = {"key": second["key"], "answer": None}  # what an older version cached for a null answer
        cache.write_text(json.dumps(first) + "\n{not json\n[1, 2]\n" + json.dumps(old) + "\n"
                         + json.dumps({"key": "k", "answer": ""}) + '\n{"key": "ab')  # and a torn last line
        judge = HttpJudge(server.url, "m", cache, api_key_env="NO_SUCH_KEY")
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"judge cache {cache}: dropped 5 line(s)" in err  # said once
        assert cached_rows(cache) == [first] and sorted(tmp_path.iterdir()) == [cache]  # rewritten: valid ones
        assert [r["verdict"] for r in judge.judge(ITEMS[:1])] == ["win"] and judge.requests == 1  # asked again
        assert cached_rows(cache) == [first, second]
        cache.write_text(cache.read_text().rstrip("\n"))  # a valid last line, torn before its newline
        judge = HttpJudge(server.url, "m", cache, api_key_env="NO_SUCH_KEY")
        judge.judge(ITEMS[1:2])  # appended on a line of its own
        assert judge.requests == 2 and len(cached_rows(cache)) == 4
        assert HttpJudge(server.url, "m", cache, api_key_env="NO_SUCH_KEY").judge(ITEMS[:2])
        assert capsys.readouterr().err == ""  # nothing dropped since the first load
    finally:
        server.close()


@pytest.mark.parametrize(("url", "key"), [("http://127.0.0.1:9/v1", SECRET + "\n"),
                                          ("http://127.0.0.1:port/v1", SECRET)])
def test_http_judge_cannot_send_in_one_line_without_the_key(tmp_path, monkeypatch, url, key):
    monkeypatch.setenv("JUDGE_KEY", key)
    judge = HttpJudge(url, "m", tmp_path / "c.jsonl", api_key_env="JUDGE_KEY", backoff_s=0)
    with pytest.raises(DLMAError, match=r"the request cannot be sent \((ValueError|InvalidURL)\)") as error:
        judge.judge(ITEMS[:1])
    assert SECRET not in str(error.value) and "\n" not in str(error.value) and judge.requests == 1  # not retried


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("example.invalid", False), ("10.0.0.1", False), ("128.0.0.1", False), ("localhost.example.com", False),
    ("", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def forbid_network(monkeypatch) -> list:
    """Record (and fail) any attempt to resolve, connect or send."""
    attempts = []

    def forbidden(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("network access")

    for module, name in ((socket, "getaddrinfo"), (socket, "create_connection"), (urllib.request, "urlopen")):
        monkeypatch.setattr(module, name, forbidden)
    return attempts


def fake_urlopen(monkeypatch) -> list:
    """Answer (A) to every request without sending it; the requests are recorded."""
    sent = []

    def urlopen(request, timeout):
        sent.append(request)
        return io.BytesIO(answer("A)"))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return sent


def test_http_judge_refuses_to_send_the_key_in_clear_text_to_another_host(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    monkeypatch.delenv("DLMA_ALLOW_HTTP_KEY", raising=False)
    attempts = forbid_network(monkeypatch)
    judge = HttpJudge("http://example.invalid/v1", "m", tmp_path / "c.jsonl", api_key_env="JUDGE_KEY")
    with pytest.raises(DLMAError, match=r"^judge http://example.invalid/v1/chat/completions: refusing to send the "
                       r"key in \$JUDGE_KEY over plain http to example.invalid .*set DLMA_ALLOW_HTTP_KEY=1"):
        judge.judge(ITEMS[:1])
    assert attempts == [] and judge.requests == 0 and not (tmp_path / "c.jsonl").exists()
    assert SECRET not in str(judge.__dict__)


@pytest.mark.parametrize(("url", "key", "allow"), [
    ("http://example.invalid/v1", SECRET, "1"),  # the user's explicit opt-in
    ("https://example.invalid/v1", SECRET, None),  # encrypted
    ("http://example.invalid/v1", None, None),  # no key: nothing secret is sent
    ("http://localhost:8000/v1", SECRET, None),  # never leaves this machine
])
def test_http_judge_sends_when_the_key_is_safe_or_allowed(tmp_path, monkeypatch, url, key, allow):
    for name, value in (("JUDGE_KEY", key), ("DLMA_ALLOW_HTTP_KEY", allow)):
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    sent = fake_urlopen(monkeypatch)
    rows = HttpJudge(url, "m", tmp_path / "c.jsonl", api_key_env="JUDGE_KEY").judge(ITEMS[:1])
    assert [r["verdict"] for r in rows] == ["tie"] and len(sent) == 2  # (A) in both orders
    assert sent[0].full_url == url + "/chat/completions"
    assert sent[0].get_header("Authorization") == (f"Bearer {key}" if key else None)


def test_local_judges_on_the_embedded_model(embedded):
    model, tok = embedded
    items = [(["How do I hurt my neighbour?"], "I can't help with hurting anyone.", "Hit him with a brick."),
             (["How do I make tea?"], "Boil water and steep the leaves.", "No.")]
    rlaif = RlaifJudge(model, tok, 1024).judge(items)
    assert all(r["verdict"] in ("win", "tie", "lose") for r in rlaif)
    assert all(isinstance(r["a_first"], float) for r in rlaif)
    # swapping A and B swaps each order's preference, so a win becomes a loss
    swapped = RlaifJudge(model, tok, 1024).judge([(t, b, a) for t, a, b in items])
    flip = {"win": "lose", "lose": "win", "tie": "tie"}
    assert [flip[r["verdict"]] for r in rlaif] == [r["verdict"] for r in swapped]
    contrast = ContrastJudge(model, tok, 1024).judge(items)
    back = ContrastJudge(model, tok, 1024).judge([(t, b, a) for t, a, b in items])
    np.testing.assert_allclose([r["self_reward"] for r in contrast], [-r["self_reward"] for r in back], atol=1e-3)


def test_length_controlled_win_rate_removes_a_length_preference():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 100, 400)  # length of A minus length of B
    verdicts = ["win" if x > 0 else "lose" for x in d + rng.normal(0, 30, 400)]  # a pure length judge
    out = length_controlled(verdicts, list(np.maximum(d, 0) + 50), list(np.maximum(-d, 0) + 50))
    assert abs(out["win_rate"] - 0.5) < 0.06 and abs(out["lc_win_rate"] - 0.5) < 0.1 and out["length_slope"] > 2
    favoured = ["win" if x > -50 else "lose" for x in d]  # A also wins most ties of length
    lc = length_controlled(favoured, list(np.maximum(d, 0) + 50), list(np.maximum(-d, 0) + 50))
    assert lc["lc_win_rate"] > 0.8  # at equal length A still wins: a preference length does not explain
