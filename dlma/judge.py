"""Pairwise judges: given a conversation and two responses A and B, which is better? "win" (A), "tie" or
"lose" (A loses). The paper judges its trained models with GPT-4; offline, two local judges stand in.

- `RlaifJudge`: the base model asked with the RLAIF prompt (the Method page, section 5), in both orders. At 135M it
  mostly prefers the longer answer, so every win rate is also given length-controlled (below).
- `ContrastJudge`: the base model's contrastive score R under a prompt pair (A as o1, B as o2): the
  difference of differences cancels what the two prompts share, length among it. Order-free.
- `HttpJudge`: any OpenAI-compatible chat-completions endpoint (base URL and model name as parameters), with
  the RLAIF prompt in both orders. The key is read from an environment variable at each request and never
  written anywhere, nor sent over plain http to another machine unless DLMA_ALLOW_HTTP_KEY=1; failed requests
  and answers that name neither option (null, empty, not JSON) are retried with exponential backoff, then
  stop the run with one line; every valid answer is cached on disk (keyed by model and prompt), so a rerun
  asks nothing, and only valid answers: a cache line that is not one is dropped and asked again.

A score within `stats.TIE_TOLERANCE` of 0 (float rounding) expresses no preference: a tie for the contrast
judge, an order without an answer for the RLAIF judge. A two-order judge says "win" or "lose" only when both
orders agree, else "tie"; `position_consistency` is the share of items where they agree. `length_controlled`
fits the judge's preference on the length difference (a logistic regression, as AlpacaEval 2's
length-controlled win rate does) and reads the win rate at no length difference.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from .artifacts import atomic_write
from .errors import DLMAError
from .preference import RLAIF_INSTRUCTION, rlaif_preferences, rlaif_prompt
from .prompts import PAIRS
from .score import self_reward_terms
from .stats import TIE_TOLERANCE

VERDICTS = ("win", "tie", "lose")


def two_order_verdict(prefers_a_first: bool | None, prefers_a_second: bool | None) -> str:
    """A's verdict from the two orders (A shown first, then B shown first): both for A, win; both for B,
    lose; anything else (disagreement, or an order without an answer), tie."""
    if prefers_a_first is True and prefers_a_second is True:
        return "win"
    if prefers_a_first is False and prefers_a_second is False:
        return "lose"
    return "tie"


def prefers(score: float) -> bool | None:
    """Whether a score prefers A (None: within TIE_TOLERANCE of 0, no preference)."""
    return None if abs(score) <= TIE_TOLERANCE else score > 0


@dataclass
class RlaifJudge:
    """The base model with the RLAIF prompt: the logit of `A` against `B` after `The answer is: (`."""

    model: object
    tokenizer: object
    max_length: int  # prompt and responses, in tokens: the run's pref_max_length, as every reading of the run
    instruction: str = RLAIF_INSTRUCTION
    batch_size: int = 8

    def judge(self, items: list[tuple[list[str], str, str]]) -> list[dict]:
        prefs = rlaif_preferences(self.model, self.tokenizer, items, self.instruction, self.max_length,
                                  self.batch_size)
        return [{"verdict": two_order_verdict(prefers(first), prefers(second)), "a_first": first, "a_second": second}
                for first, second in prefs]


@dataclass
class ContrastJudge:
    """The base model's R under a prompt pair, A as o1: A wins when R > 0. Order-free, length-neutral."""

    model: object
    tokenizer: object
    max_length: int  # as RlaifJudge's
    pair: str = "harmless"
    batch_size: int = 8

    def judge(self, items: list[tuple[list[str], str, str]]) -> list[dict]:
        terms = self_reward_terms(self.model, self.tokenizer, items, PAIRS[self.pair], "affix", self.batch_size,
                                  max_length=self.max_length, desc="judge", share_prompts=True)
        return [{"verdict": {True: "win", False: "lose", None: "tie"}[prefers(t["self_reward"])],
                 "self_reward": t["self_reward"]} for t in terms]


ALLOW_HTTP_KEY = "DLMA_ALLOW_HTTP_KEY"  # =1: send the key over plain http to a host that is not this machine


class BadAnswer(Exception):
    """The server answered, but not with text that names (A) or (B)."""


def shown(value: object, limit: int = 80) -> str:
    """What came back, for an error message: one line (repr escapes newlines) and short."""
    text = repr(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a request that never leaves this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


@dataclass
class HttpJudge:
    """An OpenAI-compatible chat-completions judge. `api_key_env` names the environment variable holding the
    key (none is sent when it is unset, as a local server needs none). A failed request is retried up to
    `retries` times, an answer naming neither option up to `answer_retries` times (at temperature 0 it seldom
    changes, but a proxy's empty answer may)."""

    base_url: str
    model: str
    cache: str | Path
    api_key_env: str = "OPENAI_API_KEY"
    instruction: str = RLAIF_INSTRUCTION
    retries: int = 5
    answer_retries: int = 2
    backoff_s: float = 1.0
    timeout_s: float = 60.0

    def __post_init__(self):
        self.cache = Path(self.cache)
        self.answers: dict[str, str] = {}
        text = self.cache.read_text(encoding="utf-8", errors="replace") if self.cache.exists() else ""
        ignored = 0
        for line in filter(str.strip, text.split("\n")):
            try:  # a torn last line, a corrupt one, or an empty answer an older version cached: asked again
                row = json.loads(line)
                key, answer = row["key"], row["answer"]
            except (ValueError, LookupError, TypeError, RecursionError):
                key = answer = None
            if isinstance(key, str) and self.valid(answer):
                self.answers[key] = answer
            else:
                ignored += 1
        if ignored or not text.endswith("\n") and text:  # rewritten, so the next line appended starts clean
            atomic_write(self.cache, "".join(self._line(k, a) for k, a in self.answers.items()))
        if ignored:
            print(f"dlma: judge cache {self.cache}: dropped {ignored} line(s) that are not valid answers "
                  "(corrupt, or an empty answer an older version cached); they are asked again", file=sys.stderr)
        self.requests = 0  # sent in this session (a rerun on a full cache sends none)

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.base_url, self.model, prompt]).encode()).hexdigest()

    @staticmethod
    def _line(key: str, answer: str) -> str:
        return json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n"

    def ask(self, prompt: str) -> str:
        key = self._key(prompt)
        if key not in self.answers:
            answer = self._request(prompt)  # valid, or it raised: nothing invalid reaches the cache
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache, "a", encoding="utf-8") as f:  # one line per answer, on disk at once
                f.write(self._line(key, answer))
                f.flush()
                os.fsync(f.fileno())
            self.answers[key] = answer
        return self.answers[key]

    def _headers(self, url: str) -> dict[str, str]:
        """The request's headers, the key among them when its variable is set; refused (before anything is
        sent) when that would put the key in clear text on the network."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if not key:
            return headers
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "http" and not is_loopback(parts.hostname or "") and os.environ.get(ALLOW_HTTP_KEY) != "1":
            raise DLMAError(f"judge {url}: refusing to send the key in ${self.api_key_env} over plain http to "
                            f"{parts.hostname} (not this machine): use https, or set {ALLOW_HTTP_KEY}=1 to allow it")
        headers["Authorization"] = f"Bearer {key}"
        return headers

    @classmethod
    def parse(cls, raw: bytes) -> str:
        """The answer in a chat-completions response body; `BadAnswer` saying what came back when there is no
        text naming an option (a null, empty or non-text content, no choices, a body that is not JSON)."""
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError, RecursionError):
            raise BadAnswer(f"not a chat-completions answer: {shown(raw)}") from None
        if not cls.valid(content):
            raise BadAnswer(f"an answer naming neither (A) nor (B): content {shown(content)}")
        return content

    def _request(self, prompt: str) -> str:
        url = self.base_url.rstrip("/") + "/chat/completions"
        headers = self._headers(url)
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 5,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        bad = 0
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return self.parse(response.read())
            except urllib.error.HTTPError as e:  # 429 and 5xx may pass; anything else is the request's fault
                problem = f"HTTP {e.code}"
                if e.code != 429 and e.code < 500:
                    break
            except BadAnswer as e:
                problem, bad = str(e), bad + 1
                if bad > self.answer_retries:
                    break
            except (ValueError, http.client.InvalidURL) as e:
                # not sendable (a bad port, a line break in the key): not retried, and its text (it may hold the key)
                # left out
                raise DLMAError(f"judge {url}: the request cannot be sent ({type(e).__name__}): check the URL, and "
                                f"${self.api_key_env} for a line break") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                problem = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                if "timed out" in str(problem).lower():
                    problem = f"no answer within {self.timeout_s:g} s"
            if attempt < self.retries:
                wait = self.backoff_s * 2**attempt  # said as it happens: a silent wait of minutes looks like a hang
                print(f"dlma: judge {url}: {problem}; retrying in {wait:g} s ({attempt + 1} of {self.retries})",
                      file=sys.stderr, flush=True)
                time.sleep(wait)
        raise DLMAError(f"judge {url} (model {self.model}): {problem} after {attempt + 1} attempt(s); answers so "
                        f"far are cached in {self.cache}, a rerun asks only the rest")

    @staticmethod
    def valid(answer: object) -> bool:
        """An answer worth caching: text that names (A) or (B)."""
        return isinstance(answer, str) and HttpJudge.choice(answer) is not None

    @staticmethod
    def choice(answer: str) -> bool | None:
        """True for (A), False for (B), None when the answer names neither first."""
        for ch in answer.strip().lstrip("(").upper()[:3]:
            if ch in "AB":
                return ch == "A"
        return None

    def judge(self, items: list[tuple[list[str], str, str]]) -> list[dict]:
        rows = []
        for turns, a, b in items:
            first = self.choice(self.ask(rlaif_prompt(turns, a, b, self.instruction)))
            second = self.choice(self.ask(rlaif_prompt(turns, b, a, self.instruction)))
            rows.append({"verdict": two_order_verdict(first, None if second is None else not second),
                         "a_first": first, "a_second": None if second is None else not second})
        return rows


def position_consistency(rows: list[dict]) -> float:
    """Share of items whose two orders agree (a tie from disagreement counts against)."""
    both = [(r.get("a_first"), r.get("a_second")) for r in rows]
    agree = [(f > 0) == (s > 0) if isinstance(f, float) else f is not None and f == s for f, s in both]
    return float(np.mean(agree)) if agree else float("nan")


def length_controlled(verdicts: list[str], len_a: list[int], len_b: list[int], iterations: int = 50) -> dict:
    """Win rate of A (a tie counts half) and the same at no length difference: the intercept of a logistic
    regression of the outcome on the standardised length difference (fitted by Newton's method)."""
    y = np.array([{"win": 1.0, "tie": 0.5, "lose": 0.0}[v] for v in verdicts])
    d = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    scale = d.std() or 1.0
    x = np.column_stack([np.ones_like(d), d / scale])
    w = np.zeros(2)
    ridge = np.diag([0.0, 1e-3 * len(y)])  # a little: a judge that only follows length is near-separable
    for _ in range(iterations):
        p = expit(x @ w)
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + ridge + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (y - p) - ridge @ w)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return {"win_rate": float(y.mean()), "lc_win_rate": float(expit(w[0])),
            "length_slope": float(w[1]), "n": int(len(y))}
