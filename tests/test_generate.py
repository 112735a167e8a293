"""Contrastive generation (SPEC section 2): the response cut, and a resumable, seeded `dlma generate`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

from dlma.artifacts import sha256_file
from dlma.data import load_examples
from dlma.generate import GenerateConfig, cut_response, run_generate
from dlma.models import DEFAULT_MODEL, ModelConfig, load_tokenizer, resolve_spec, weights_sha256
from dlma.params import Out, Queries
from dlma.prompts import PAIRS, stop_strings

N, BATCH, NEW_TOKENS = 16, 4, 8


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(DEFAULT_MODEL)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


# ---------------------------------------------------------------- cut_response


def test_cut_at_eos(tok):
    eos = tok.eos_token_id
    head = ids_of(tok, "Hello there, friend.")
    kept, why = cut_response([*head, eos, *ids_of(tok, " more\nUSER: x")], tok, {eos}, stop_strings("affix"))
    assert (kept, why) == (head, "eos")
    kept, why = cut_response([eos, *head], tok, {eos}, stop_strings("affix"))
    assert (kept, why) == ([], "eos")


def test_no_stop_keeps_everything(tok):
    ids = ids_of(tok, "Just a plain answer with no new turn.")
    assert cut_response(ids, tok, {tok.eos_token_id}, stop_strings("affix")) == (ids, "length")
    # the chat rendering has no stop strings: a turn ends with EOS alone
    with_user = ids_of(tok, "Answer.\nUSER: next")
    assert cut_response(with_user, tok, {tok.eos_token_id}, stop_strings("chat")) == (with_user, "length")


@pytest.mark.parametrize(
    "text, stop, kept_text",
    [
        ("Sure, here it is.\nUSER: now something else", "\nUSER:", "Sure, here it is."),
        ("I won't help.\nASSISTANT(toxic): fine", "\nASSISTANT", "I won't help."),
        ("Fine.\n\nHuman: and then?", "\nHuman:", "Fine.\n"),
        ("Two stops.\nAssistant: a\nUSER: b", "\nAssistant:", "Two stops."),
    ],
)
def test_cut_before_a_new_turn(tok, text, stop, kept_text):
    ids = ids_of(tok, text)
    kept, why = cut_response(ids, tok, {tok.eos_token_id}, stop_strings("affix"))
    assert why == "turn"
    assert kept == ids[: len(kept)]  # a prefix of the generated ids: the cut is at a token boundary
    decoded = tok.decode(kept)
    assert decoded == kept_text
    assert not any(s in decoded for s in stop_strings("affix"))
    assert stop in text[len(decoded):len(decoded) + len(stop) + 1]


def test_cut_when_the_stop_starts_inside_a_token(tok):
    # ' \n' is one token, and "\nUSER:" starts in its middle: the whole token goes
    space_nl = tok.convert_tokens_to_ids("\u0120\u010a")
    assert tok.decode([space_nl]) == " \n"
    ids = [*ids_of(tok, "ok"), space_nl, *ids_of(tok, "USER: hi")]
    assert "\nUSER:" in tok.decode(ids)
    kept, why = cut_response(ids, tok, {tok.eos_token_id}, stop_strings("affix"))
    assert (kept, why) == (ids_of(tok, "ok"), "turn")


def test_generate_config_validates():
    from dlma.errors import DLMAError

    with pytest.raises(DLMAError, match="temperature"):
        GenerateConfig(temperature=0)
    with pytest.raises(DLMAError, match="'nope'"):
        GenerateConfig(pair="nope").check_pairs(PAIRS)


# ---------------------------------------------------------------- dlma generate, killed and resumed


def cli_generate(out: Path, seed: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dlma.cli", "generate", "--queries", "sample:queries", "--n-queries", str(N),
           "--max-new-tokens", str(NEW_TOKENS), "--gen-batch-size", str(BATCH), "--seed", str(seed),
           "--device", "cpu", "--dtype", "float32", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def gen_cfg(seed: int = 0) -> GenerateConfig:
    return GenerateConfig(max_new_tokens=NEW_TOKENS, gen_batch_size=BATCH, seed=seed)


def generate(out: Path, cfg: GenerateConfig, n: int, model) -> list[dict]:
    """Stage 1 as `dlma generate` runs it: the first `n` shipped queries into the folder `out`."""
    return run_generate(ModelConfig(DEFAULT_MODEL), Queries("sample:queries", n), cfg, Out(str(out)), model=model)


@pytest.fixture(scope="module")
def uninterrupted(embedded, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen-uninterrupted")
    generate(out, gen_cfg(0), N, model=embedded)
    return out


@pytest.mark.slow
def test_killed_generate_resumes_to_the_same_bytes(tmp_path, uninterrupted):
    out = tmp_path / "run"
    partial, final = out / "pairs.partial.jsonl", out / "pairs.jsonl"
    proc = cli_generate(out)
    deadline = time.time() + 300
    while not (partial.exists() and partial.read_text().count("\n") >= BATCH):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no batch written in 300 s"
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    assert not final.exists(), "the run finished before it could be killed"
    lines_at_kill = partial.read_text().count("\n")
    assert BATCH <= lines_at_kill < N
    assert not (out / "manifest.json").exists()

    proc = cli_generate(out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"{N} pairs" in stdout
    assert final.exists() and not partial.exists()
    rows = [json.loads(line) for line in final.read_text().splitlines()]
    assert len(rows) == N
    assert final.read_bytes() == (uninterrupted / "pairs.jsonl").read_bytes()

    queries = load_examples("sample:queries", limit=N)
    assert [r["id"] for r in rows] == [q.id for q in queries]
    for k, (r, q) in enumerate(zip(rows, queries, strict=True)):
        assert r["turns"] == q.turns and r["pair"] == q.pair and r["rendering"] == "affix"
        assert r["batch"] == k // BATCH
        for o in ("o1", "o2"):
            assert isinstance(r[o], str) and r[o] == r[o].strip()
            assert 0 <= r[f"{o}_tokens"] <= NEW_TOKENS
            assert r[f"{o}_end"] in ("eos", "turn", "length")
            assert not re.search(r"\nUSER:|\nASSISTANT|\nHuman:|\nAssistant:", r[o])

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "generate"
    p = manifest["params"]
    assert (p["seed"], p["max_new_tokens"], p["gen_batch_size"], p["n_queries"], p["queries"]) == (
        0, NEW_TOKENS, BATCH, N, "sample:queries")
    assert (p["temperature"], p["top_k"], p["rendering"], p["pair"]) == (1.0, 50, "affix", "harmless")
    assert manifest["model"]["weights_sha256"] == weights_sha256(resolve_spec(DEFAULT_MODEL))
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["model"]["weights_sha256"])
    assert manifest["versions"]["torch"] == metadata.version("torch")
    assert manifest["versions"]["transformers"] != "not installed"
    assert manifest["wall_time_s"] > 0
    assert manifest["n_pairs"] == N
    assert manifest["files"]["pairs.jsonl"] == sha256_file(final)


@pytest.mark.slow
def test_resume_after_a_torn_partial_batch(embedded, tmp_path, uninterrupted):
    """A kill in the middle of a batch's write: some of its rows on disk, the next one torn."""
    good = (uninterrupted / "pairs.jsonl").read_text().splitlines(keepends=True)
    out = tmp_path / "torn"
    out.mkdir()
    shutil.copy(uninterrupted / "params.json", out / "params.json")  # written before the first pair
    (out / "pairs.partial.jsonl").write_text("".join(good[: BATCH + 2]) + good[BATCH + 2][:40])
    rows = generate(out, gen_cfg(0), N, model=embedded)
    assert len(rows) == N
    assert (out / "pairs.jsonl").read_bytes() == (uninterrupted / "pairs.jsonl").read_bytes()


@pytest.mark.slow
def test_finished_run_is_not_regenerated(embedded, tmp_path, uninterrupted):
    out = tmp_path / "again"
    shutil.copytree(uninterrupted, out)
    before = (out / "pairs.jsonl").stat().st_mtime_ns
    rows = generate(out, gen_cfg(0), N, model=(None, None))  # any use of the model would fail
    assert len(rows) == N and (out / "pairs.jsonl").stat().st_mtime_ns == before


@pytest.mark.slow
def test_another_seed_gives_other_pairs(embedded, tmp_path, uninterrupted):
    rows = generate(tmp_path, gen_cfg(1), N, model=embedded)
    base = [json.loads(line) for line in (uninterrupted / "pairs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in base]
    differ = sum((a["o1"], a["o2"]) != (b["o1"], b["o2"]) for a, b in zip(rows, base, strict=True))
    assert differ >= N // 2
    assert json.loads((tmp_path / "manifest.json").read_text())["params"]["seed"] == 1


def test_turn_stop_on_token_ids(tok):
    from dlma.generate import StopAtTurn

    stop = StopAtTurn(tok, stop_strings("affix"), "cpu")
    seqs = [tok("Sure, here it is.\nUSER: and", add_special_tokens=False).input_ids[:-1],  # ends "...\nUSER:"
            tok("Sure, here it is. More", add_special_tokens=False).input_ids]
    width = max(map(len, seqs))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in seqs])
    assert stop(ids, None).tolist() == [True, False]


def test_token_stops_keep_what_stop_strings_kept(embedded):
    """The early stop on token ids keeps, after the cut, the very tokens transformers' `stop_strings` kept:
    the same seed draws the same tokens, and the cut is made on the text either way."""
    from dlma.generate import eos_token_ids, sample
    from dlma.logprobs import pad
    from dlma.prompts import PAIRS, prompt_ids, render

    model, tok = embedded
    queries = load_examples("sample:queries", limit=6)
    prompts = [prompt_ids(render(q.turns, PAIRS["harmless"], side, "affix", tok), tok, "affix")
               for q in queries for side in ("pos", "neg")]
    few_shot = "USER: Hi!\nASSISTANT: Hello.\nUSER: What is 2+2?\nASSISTANT: 4.\nUSER: And {k}+{k}?\nASSISTANT:"
    prompts += [prompt_ids(few_shot.format(k=k), tok, "affix") for k in range(3, 7)]  # these go on to a new turn
    ours = sample(model, tok, prompts, GenerateConfig(max_new_tokens=40), seed=11)
    ids, mask = pad(prompts, tok.pad_token_id, "left")
    torch.manual_seed(11)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=50, top_p=1.0,
                         max_new_tokens=40, pad_token_id=tok.pad_token_id, stop_strings=stop_strings("affix"),
                         tokenizer=tok)[:, ids.shape[1]:].tolist()
    eos = eos_token_ids(model, tok)
    assert ours == [cut_response(o, tok, eos, stop_strings("affix")) for o in ref]
    assert {why for _, why in ours} >= {"turn"}  # the stop mattered in this sample


def test_token_budget_batches_by_length_and_writes_in_query_order(embedded, tmp_path):
    from dlma.generate import query_batches

    model, tok = embedded
    cfg = GenerateConfig(max_new_tokens=6, gen_batch_size=4, max_batch_tokens=200, seed=0)
    examples = load_examples("sample:queries", limit=10)
    batches, budget = query_batches(model, tok, examples, cfg)
    assert budget == 200 and sorted(e.id for b in batches for e in b) == sorted(e.id for e in examples)
    assert len(batches) > 3  # more than the 3 batches of 4 by count: the budget binds
    rows = generate(tmp_path / "a", cfg, 10, model=embedded)
    assert [r["id"] for r in rows] == [e.id for e in examples]
    assert sorted({r["batch"] for r in rows}) == list(range(len(batches)))
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["max_batch_tokens"] == 200
    again = generate(tmp_path / "b", cfg, 10, model=embedded)
    assert again == rows
    assert (tmp_path / "a" / "pairs.jsonl").read_bytes() == (tmp_path / "b" / "pairs.jsonl").read_bytes()
    # killed after two batches: the rest is generated, the file is the same
    done = [r for r in rows if r["batch"] < 2]
    (tmp_path / "c").mkdir()
    shutil.copy(tmp_path / "a" / "params.json", tmp_path / "c" / "params.json")
    (tmp_path / "c" / "pairs.partial.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done))
    generate(tmp_path / "c", cfg, 10, model=embedded)
    assert (tmp_path / "c" / "pairs.jsonl").read_bytes() == (tmp_path / "a" / "pairs.jsonl").read_bytes()
