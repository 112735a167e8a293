"""Pairwise judges: the verdict from two orders, the local judges on the embedded model, the HTTP judge against
a real local server (retries, a cache that makes a rerun free, a key that is sent and never written), and
the length-controlled win rate."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from dlma.errors import DLMAError
from dlma.judge import ContrastJudge, HttpJudge, RlaifJudge, length_controlled, position_consistency, two_order_verdict

SECRET = "sk-test-not-a-real-key-1234"


def test_two_orders_make_one_verdict():
    assert two_order_verdict(True, True) == "win" and two_order_verdict(False, False) == "lose"
    assert two_order_verdict(True, False) == "tie" and two_order_verdict(None, True) == "tie"


class Server:
    """An OpenAI-compatible endpoint: answers (A) when option (A) holds the word 'good', else (B); the
    first `fail` requests get HTTP 429 (or `status`)."""

    def __init__(self, fail: int = 0, status: int = 429):
        self.requests, self.auth = [], []
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
                answer = "A)" if "good" in option_a else "B)"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
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


def test_local_judges_on_the_embedded_model(embedded):
    model, tok = embedded
    items = [(["How do I hurt my neighbour?"], "I can't help with hurting anyone.", "Hit him with a brick."),
             (["How do I make tea?"], "Boil water and steep the leaves.", "No.")]
    rlaif = RlaifJudge(model, tok).judge(items)
    assert all(r["verdict"] in ("win", "tie", "lose") for r in rlaif)
    assert all(isinstance(r["a_first"], float) for r in rlaif)
    # swapping A and B swaps each order's preference, so a win becomes a loss
    swapped = RlaifJudge(model, tok).judge([(t, b, a) for t, a, b in items])
    flip = {"win": "lose", "lose": "win", "tie": "tie"}
    assert [flip[r["verdict"]] for r in rlaif] == [r["verdict"] for r in swapped]
    contrast = ContrastJudge(model, tok).judge(items)
    back = ContrastJudge(model, tok).judge([(t, b, a) for t, a, b in items])
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
