"""The catalogue of bad inputs a user gives the CLI, one case per input.

Each ends in exactly one line of ours on stderr, `dlma <cmd>: error: ...`, naming the file, the line (from 1)
and the field where there is one, with exit status 2, no traceback, and nothing written. The checks run
before a model is loaded, so the cases take milliseconds (the CLI is called in-process; a few cases also
run as a real subprocess). Inputs that are not errors but are left out for a documented reason are at the
end: counted in the manifest and said once on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlma.cli import main
from dlma.lock import LOCK_FILE, holder

QUERY = {"id": "q1", "prompt": "How do I bake bread?"}
PAIR = {"id": "p1", "turns": ["How do I bake bread?"], "o1": "Knead, rise, bake.", "o2": "Burn it."}
LABELLED = {"id": "h1", "prompt": "How do I bake bread?", "chosen": "Knead, rise, bake.", "rejected": "No."}
WORDS_100 = " ".join(["word"] * 100)  # 100 tokens of the embedded model's tokenizer


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def files_under(root: Path) -> set[Path]:
    """Every path under `root`, but a folder's lock file once it is free and empty: the file may stay (dlma/lock.py),
    the OS lock on it must not (a refused stage lets its folder go)."""
    return {p for p in root.rglob("*")
            if not (p.name == LOCK_FILE and p.stat().st_size == 0 and holder(p.parent) is None)}


# Each case: (id, function(tmp_path, tiny) -> argv, the substrings our one line must hold). `tiny` is the
# path of a tiny local model, so that a case that gets past the checks would fail on a real model load.
def q(tmp, rows):
    return jsonl(tmp / "q.jsonl", rows)


def p(tmp, rows):
    return jsonl(tmp / "pairs.jsonl", rows)


def h(tmp, rows):
    return jsonl(tmp / "h.jsonl", rows)


def gen(tmp, tiny, *extra, queries=None):
    return ["generate", "--model", tiny, "--queries", queries or q(tmp, [QUERY]), "--out", str(tmp / "out"), *extra]


def score(tmp, tiny, rows, *extra):
    return ["score", "--model", tiny, "--pairs", p(tmp, rows), "--out", str(tmp / "out"), *extra]


def pref(tmp, tiny, *extra, rows=None):
    return ["pref-acc", "--model", tiny, "--pref-data", h(tmp, rows or [LABELLED]), "--out", str(tmp / "out"), *extra]


def study(tmp, tiny, *extra):
    rows = [{**LABELLED, "id": f"h{i}"} for i in range(5)]
    return ["pair-study", "--model", tiny, "--pref-data", h(tmp, rows), "--run", str(tmp / "run"), *extra]


def train(tmp, tiny, rows, *extra):
    return ["train", "--model", tiny, "--pairs", p(tmp, rows), "--out", str(tmp / "out"), *extra]


def binary_file(tmp):
    path = tmp / "q.jsonl"
    path.write_bytes(json.dumps(QUERY).encode() + b"\n\xff\xfe\x00\x9c garbage\n")
    return str(path)


def model_folder(tmp, config: dict | None):
    folder = tmp / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def foreign_adapter(tmp) -> str:
    """A LoRA adapter saved on a base of other shapes (hidden size 32, not the tiny model's 64)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    base = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                                        num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=2))
    base.name_or_path = "/elsewhere/other-base"
    get_peft_model(base, LoraConfig(r=2, target_modules="all-linear")).save_pretrained(tmp / "adapter")
    return str(tmp / "adapter")


def model_copy(tmp, tiny, keep: tuple[str, ...], weights: bytes | None = None) -> str:
    """The tiny model's folder with only the files named in `keep` (and, given `weights`, a model.safetensors
    holding those bytes)."""
    folder = tmp / "model"
    folder.mkdir()
    for name in keep:
        (folder / name).write_bytes((Path(tiny) / name).read_bytes())
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


def preset_file(tmp, text):
    path = tmp / "preset.yaml"
    path.write_text(text)
    return str(path)


def unwritable(tmp):
    if Path("/proc").is_dir():
        return "/proc/dlma-out"  # refused even to root, who may write anywhere else
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    return str(locked / "out")


def foreign_out(tmp):
    """An --out folder that already holds someone else's pairs.jsonl."""
    (tmp / "out").mkdir()
    return jsonl(tmp / "out" / "pairs.jsonl", [PAIR])


def pairs_file(tmp, text):
    (tmp / "pairs.yaml").write_text(text)
    return str(tmp / "pairs.yaml")


def a_file(tmp):
    (tmp / "file.txt").write_text("not a folder\n")
    return str(tmp / "file.txt")


CASES = [
    # generate: the data file
    ("gen-binary-garbage", lambda t, m: gen(t, m, queries=binary_file(t)), ["q.jsonl:2:", "not UTF-8"]),
    ("gen-folder-without-data", lambda t, m: gen(t, m, queries=str(t)), ["{t} [train]: a folder in which datasets "
                                                                          "finds no data files"]),
    ("gen-missing-file", lambda t, m: gen(t, m, queries=str(t / "nope.jsonl")), ["nope.jsonl: no such file"]),
    ("gen-malformed-json", lambda t, m: gen(t, m, queries=q(t, [QUERY, "{oops"])), ["q.jsonl:2:", "malformed JSON"]),
    ("gen-row-not-object", lambda t, m: gen(t, m, queries=q(t, [[1, 2]])), ["q.jsonl:1:", "a JSON object, got list"]),
    ("gen-prompt-not-string", lambda t, m: gen(t, m, queries=q(t, [{"prompt": 5}])),
     ["q.jsonl:1: field 'prompt'", "expected a string"]),
    ("gen-prompt-empty", lambda t, m: gen(t, m, queries=q(t, [{"prompt": "  "}])), ["q.jsonl:1: field 'prompt'"]),
    ("gen-no-prompt", lambda t, m: gen(t, m, queries=q(t, [{"text": "hi"}])), ["q.jsonl:1: field 'prompt': missing"]),
    ("gen-duplicate-ids", lambda t, m: gen(t, m, queries=q(t, [QUERY, QUERY])),
     ["q.jsonl:2: field 'id': duplicate id 'q1' (first at line 1)"]),
    ("gen-empty-file", lambda t, m: gen(t, m, queries=q(t, [])), ["no usable rows (the file holds no rows)"]),
    ("gen-unknown-pair-in-row", lambda t, m: gen(t, m, queries=q(t, [{**QUERY, "pair": "kind"}])),
     ["q.jsonl:1: field 'pair'", "unknown prompt pair 'kind'"]),
    # found by tests/test_properties.py
    ("gen-pair-a-list", lambda t, m: gen(t, m, queries=q(t, [{**QUERY, "pair": ["harmless"]}])),
     ["q.jsonl:1: field 'pair': expected the name of a prompt pair, got list"]),
    ("gen-number-too-long", lambda t, m: gen(t, m, queries=q(t, ['{"prompt": "q", "id": ' + "1" * 5000 + "}"])),
     ["q.jsonl:1: JSON this reader cannot take (Exceeds the limit (4300 digits)"]),
    ("gen-nested-too-deeply", lambda t, m: gen(t, m, queries=q(t, ["[" * 100_000 + "]" * 100_000])),
     ["q.jsonl:1: JSON this reader cannot take (nested too deeply)"]),
    ("gen-empty-message", lambda t, m: gen(t, m, queries=q(t, [{"prompt": [{"role": "user", "content": " "}]}])),
     ["q.jsonl:1: field 'prompt': message 1 is empty"]),
    ("gen-message-not-text", lambda t, m: gen(t, m, queries=q(t, [{"prompt": [{"role": "user", "content": None}]}])),
     ["q.jsonl:1: field 'prompt': expected a string or a list of {role, content} messages"]),
    ("pref-hh-empty-turn", lambda t, m: pref(t, m, "--on-invalid", "error", rows=[
        {"chosen": "\n\nHuman: \n\nAssistant: Sure.", "rejected": "\n\nHuman: \n\nAssistant: No."}]),
     ["h.jsonl:1: field 'chosen': turn 1 of the context is empty"]),
    ("score-pair-a-list", lambda t, m: score(t, m, [{**PAIR, "pair": ["harmless"]}]),
     ["pairs.jsonl:1: field 'pair': expected the name of a prompt pair, got ['harmless']"]),
    ("score-o1-nul", lambda t, m: score(t, m, [{**PAIR, "o1": "Knead\u0000"}]),
     ["pairs.jsonl:1: field 'o1': holds a NUL character at character 6"]),
    ("pairs-file-control-character", lambda t, m: gen(t, m, "--pairs-file", pairs_file(t, "\x1f")),
     ["pairs.yaml: not valid YAML or JSON (unacceptable character #x001f: special characters are not allowed)"]),
    ("run-set-unparsable-yaml", lambda t, m: ["run", "--preset", "smoke", "--set", "beta=[0.1", "--run-id", "x"],
     ["--set beta=...: expected a finite number, got '[0.1'"]),
    ("run-preset-number-as-name", lambda t, m: ["run", "--preset", preset_file(t, "seed: 0\n1: 2\n")],
     ["preset.yaml:2: parameter name 1 is not text"]),
    # generate: options
    ("gen-limit-0", lambda t, m: gen(t, m, "--n-queries", "0"), ["n_queries must be an integer >= 1", "got 0"]),
    ("gen-limit-negative", lambda t, m: gen(t, m, "--n-queries", "-3"),
     ["n_queries must be an integer >= 1", "got -3"]),
    ("gen-limit-not-a-number", lambda t, m: gen(t, m, "--n-queries", "ten"),
     ["--n-queries", "expected an integer, got 'ten'"]),
    ("gen-batch-size-0", lambda t, m: gen(t, m, "--gen-batch-size", "0"), ["gen_batch_size=0: must be >= 1"]),
    ("gen-temperature-0", lambda t, m: gen(t, m, "--temperature", "0"), ["temperature=0.0: must be > 0"]),
    ("gen-top-p-2", lambda t, m: gen(t, m, "--top-p", "2"), ["top_p=2.0"]),
    ("gen-unknown-rendering", lambda t, m: gen(t, m, "--rendering", "fancy"), ["rendering='fancy'"]),
    ("gen-unknown-pair", lambda t, m: gen(t, m, "--pair", "kind"), ["unknown prompt pair 'kind'"]),
    ("gen-every-query-too-long", lambda t, m: gen(t, m, "--max-query-words", "2"),
     ["every query is over max_query_words=2"]),
    # generate: the output folder
    ("gen-out-is-a-file", lambda t, m: [*gen(t, m)[:-1], a_file(t)], ["exists and is not a folder"]),
    ("gen-out-under-a-file", lambda t, m: [*gen(t, m)[:-1], a_file(t) + "/sub"], ["is a file, so"]),
    ("gen-out-unwritable", lambda t, m: [*gen(t, m)[:-1], unwritable(t)], ["dlma-out" if Path("/proc").is_dir()
                                                                           else "not writable"]),
    ("gen-out-holds-foreign-files", lambda t, m: foreign_out(t) and gen(t, m),
     ["holds files that no dlma stage recorded here (pairs.jsonl)"]),
    ("gen-lone-surrogate", lambda t, m: gen(t, m, queries=q(t, [{"prompt": "Hi \ud800 there"}])),
     ["q.jsonl:1: field 'prompt': holds a lone surrogate at character 4"]),
    ("gen-nul", lambda t, m: gen(t, m, queries=q(t, [{"prompt": "Hi\u0000"}])),
     ["q.jsonl:1: field 'prompt': holds a NUL character"]),
    # the prompt pairs file
    ("pairs-file-twice", lambda t, m: gen(t, m, "--pairs-file", pairs_file(
        t, "k:\n  pos: a {}\n  neg: b {}\nk:\n  pos: b {}\n  neg: a {}\n")),
     ["pairs.yaml:4: field 'k': pair 'k' is defined twice (first at line 1)"]),
    ("pairs-file-mapping-name",
     lambda t, m: gen(t, m, "--pairs-file", pairs_file(t, "? {a: 1}\n: {pos: 'a {}', neg: 'b {}'}\n")),
     ["pairs.yaml:1: a pair's name must be a string"]),
    ("pairs-file-missing", lambda t, m: gen(t, m, "--pairs-file", str(t / "nope.yaml")), ["nope.yaml: no such file"]),
    ("pairs-file-no-query-slot", lambda t, m: gen(t, m, "--pairs-file", pairs_file(t, "k:\n  pos: a\n  neg: b {}\n")),
     ["pairs.yaml:2: field 'k.pos': needs exactly one '{}'"]),
    ("pairs-file-unknown-pair", lambda t, m: gen(t, m, "--pairs-file", pairs_file(t, "k:\n  pos: a {}\n  neg: b {}\n"),
                                                 "--pair", "kk"),
     ["unknown prompt pair 'kk'", ", k,"]),
    # the model
    ("model-empty-folder", lambda t, m: gen(t, model_folder(t, None)), ["no config.json"]),
    ("model-custom-code", lambda t, m: gen(t, model_folder(t, {"model_type": "x", "auto_map": {"AutoModel": "m.M"}})),
     ["--trust-remote-code"]),
    ("model-is-a-file", lambda t, m: gen(t, a_file(t)), ["is a file; give a model folder"]),
    ("model-no-such-folder", lambda t, m: gen(t, str(t / "models" / "x")), ["no such folder"]),
    ("model-no-tokenizer-files", lambda t, m: gen(t, model_copy(t, m, ("config.json", "model.safetensors"))),
     ["model': the folder has no tokenizer files (tokenizer.json, "]),
    ("model-no-weights", lambda t, m: gen(t, model_copy(t, m, ("config.json", "tokenizer.json"))),
     ["the folder has no weights (*.safetensors, "]),
    # found when the model is loaded, after params.json was written: which goes again with the folder
    ("model-corrupt-weights", lambda t, m: gen(t, model_copy(t, m, ("config.json", "tokenizer.json",
                                                                  "tokenizer_config.json"), b"not safetensors")),
     ["model '", "cannot be loaded ("]),
    ("model-device-cuda", lambda t, m: gen(t, m, "--device", "cuda"), ["device 'cuda'", "sees no CUDA GPU"]),
    ("model-device-bogus", lambda t, m: gen(t, m, "--device", "gpu0"), ["device 'gpu0'"]),
    ("model-dtype-bogus", lambda t, m: gen(t, m, "--dtype", "float8"), ["unknown dtype 'float8'"]),
    # score
    ("score-binary-garbage", lambda t, m: ["score", "--model", m, "--pairs", binary_file(t), "--out", str(t / "o")],
     ["q.jsonl:2:", "not UTF-8"]),
    ("score-folder-without-pairs", lambda t, m: ["score", "--model", m, "--pairs", str(t), "--out", str(t / "o")],
     ["a folder without scored.jsonl or pairs.jsonl"]),
    ("score-row-not-object", lambda t, m: score(t, m, [PAIR, '"text"']), ["pairs.jsonl:2:", "got str"]),
    ("score-o1-not-string", lambda t, m: score(t, m, [{**PAIR, "o1": 3}]),
     ["pairs.jsonl:1: field 'o1': expected a string, got int"]),
    ("score-o2-missing", lambda t, m: score(t, m, [{k: v for k, v in PAIR.items() if k != "o2"}]),
     ["pairs.jsonl:1: field 'o2': missing"]),
    ("score-turns-a-string", lambda t, m: score(t, m, [{**PAIR, "turns": "How?"}]),
     ["pairs.jsonl:1: field 'turns'", "list of non-empty strings"]),
    ("score-turns-empty", lambda t, m: score(t, m, [{**PAIR, "turns": []}]), ["pairs.jsonl:1: field 'turns'"]),
    ("score-id-a-list", lambda t, m: score(t, m, [{**PAIR, "id": [1]}]), ["pairs.jsonl:1: field 'id'"]),
    ("score-duplicate-ids", lambda t, m: score(t, m, [PAIR, PAIR]),
     ["pairs.jsonl:2: field 'id': duplicate id 'p1' (first at line 1)"]),
    ("score-empty-file", lambda t, m: score(t, m, []), ["no usable pairs (the file holds no rows)"]),
    ("score-all-responses-empty", lambda t, m: score(t, m, [{**PAIR, "o1": ""}]),
     ["no usable pairs (all 1 were left out, the first: ", "pairs.jsonl:1: field 'o1': empty response"]),
    ("score-unknown-rendering-in-row", lambda t, m: score(t, m, [{**PAIR, "rendering": "xml"}]),
     ["pairs.jsonl:1: field 'rendering'", "unknown rendering 'xml'"]),
    ("score-unknown-pair-in-row", lambda t, m: score(t, m, [{**PAIR, "pair": "kind"}]),
     ["pairs.jsonl:1: field 'pair'", "unknown prompt pair 'kind'"]),
    ("score-batch-size-0", lambda t, m: score(t, m, [PAIR], "--score-batch-size", "0"),
     ["score_batch_size=0: must be >= 1"]),
    ("score-max-length-0", lambda t, m: score(t, m, [PAIR], "--score-max-length", "0"),
     ["score_max_length=0: must be >= 2"]),
    ("score-unknown-rendering", lambda t, m: score(t, m, [PAIR], "--rendering", "fancy"), ["rendering='fancy'"]),
    ("score-every-response-too-long", lambda t, m: score(t, m, [{**PAIR, "o2": WORDS_100}], "--score-max-length", "64"),
     ["no usable pairs (all 1 were left out, the first: ", "pairs.jsonl: id 'p1': field 'o2': 100 tokens leave 0 of "
      "max_length=64, too few to keep what tells harmless's p+ from p-"]),
    # pref-acc
    ("pref-limit-0", lambda t, m: pref(t, m, "--pref-limit", "0"), ["pref_limit must be an integer >= 1"]),
    ("pref-limit-negative", lambda t, m: pref(t, m, "--pref-limit", "-1"), ["pref_limit must be an integer >= 1"]),
    ("pref-batch-size-0", lambda t, m: pref(t, m, "--score-batch-size", "0"), ["score_batch_size=0"]),
    ("pref-n-bootstrap-0", lambda t, m: pref(t, m, "--n-bootstrap", "0"), ["n_bootstrap=0"]),
    ("pref-unknown-scorer", lambda t, m: pref(t, m, "--scorers", "dlma,oracle"), ["unknown oracle"]),
    ("pref-implicit-without-adapter", lambda t, m: pref(t, m, "--scorers", "implicit"), ["needs a trained adapter"]),
    ("pref-adapter-not-an-adapter", lambda t, m: pref(t, m, "--scorers", "implicit", "--adapter", str(t)),
     ["not a LoRA adapter folder"]),
    ("pref-adapter-of-another-base", lambda t, m: pref(t, m, "--scorers", "implicit", "--adapter", foreign_adapter(t)),
     ["adapter: a LoRA adapter of base '/elsewhere/other-base', not of model '", "in the model, ", "in the adapter"]),
    ("pref-unlabelled-rows", lambda t, m: pref(t, m, rows=[QUERY]),
     ["h.jsonl:1: field 'chosen': missing (this stage needs labelled pairs)"]),
    ("pref-every-row-invalid", lambda t, m: pref(t, m, rows=[{**LABELLED, "chosen": " "}]),
     ["no usable rows (all 1 were left out, the first: ", "h.jsonl:1: field 'chosen': empty response"]),
    ("pref-every-response-too-long", lambda t, m: pref(t, m, "--pref-max-length", "64", "--scorers", "loglik,length",
                                                       rows=[{**LABELLED, "rejected": WORDS_100}]),
     ["no usable rows (all 1 were left out, the first: ", "h.jsonl:1: field 'rejected': 100 tokens leave 0 of "
      "max_length=64, too few for its prompt"]),
    ("pref-bad-label-field", lambda t, m: pref(t, m, "--label-field", "best"), ["label_field must be one of"]),
    ("pref-pku-label-not-0-1", lambda t, m: pref(t, m, rows=[{"prompt": "q", "response_0": "a", "response_1": "b",
                                                              "safer_response_id": 2}]),
     ["h.jsonl:1: field 'safer_response_id': must be 0 or 1"]),
    # pair-study
    ("study-unknown-variant", lambda t, m: study(t, m, "--study-variants", "harmless,kindly"),
     ["study_variants: 'kindly': unknown prompt pair 'kindly'"]),
    ("study-select-all", lambda t, m: study(t, m, "--study-select", "5"),
     ["study_select=5: leaves no pair to confirm"]),
    ("study-select-0", lambda t, m: study(t, m, "--study-select", "0"), ["study_select=0: must be >= 1"]),
    ("generate-budget-negative", lambda t, m: gen(t, m, "--max-batch-tokens", "-1"), ["max_batch_tokens=-1"]),
    # train
    ("train-no-self-reward", lambda t, m: train(t, m, [PAIR]), ["pairs.jsonl:1: field 'self_reward': missing"]),
    ("train-self-reward-nan", lambda t, m: train(t, m, [{**PAIR, "self_reward": float("nan")}]),
     ["pairs.jsonl:1: field 'self_reward'", "not a finite number"]),
    ("train-self-reward-text", lambda t, m: train(t, m, [{**PAIR, "self_reward": "high"}]),
     ["pairs.jsonl:1: field 'self_reward'"]),
    ("per-device-train-batch-size-0",
     lambda t, m: train(t, m, [{**PAIR, "self_reward": 1.0}], "--per-device-train-batch-size", "0"),
     ["per_device_train_batch_size=0"]),
    ("train-margin-clip-reversed", lambda t, m: train(t, m, [{**PAIR, "self_reward": 1.0}], "--margin-low", "5",
                                                      "--margin-high", "-5"),
     ["TrainConfig: the clamp of R needs L < U (margin_low < margin_high), got (5.0, -5.0)"]),
    ("train-corrupt-weights", lambda t, m: train(t, model_copy(t, m, ("config.json", "tokenizer.json",
                                                                    "tokenizer_config.json"), b"not safetensors"),
                                                 [{**PAIR, "self_reward": 1.0}]), ["cannot be loaded ("]),
    ("train-out-is-a-file", lambda t, m: [*train(t, m, [{**PAIR, "self_reward": 1.0}])[:-1], a_file(t)],
     ["exists and is not a folder"]),
    # run
    ("run-set-wrong-type", lambda t, m: ["run", "--preset", "smoke", "--set", "n_queries=abc", "--run-id", "x"],
     ["--set n_queries=...: expected an integer", "got 'abc'"]),
    ("run-set-bool-for-int", lambda t, m: ["run", "--preset", "smoke", "--set", "n_queries=true", "--run-id", "x"],
     ["--set n_queries=...: expected an integer", "got 'true'"]),
    ("run-set-unknown-key", lambda t, m: ["run", "--preset", "smoke", "--set", "n_querys=4"],
     ["--set n_querys=...: unknown parameter 'n_querys'", "(did you mean 'n_queries'?)"]),
    ("run-set-no-value", lambda t, m: ["run", "--preset", "smoke", "--set", "n_queries"], ["expected KEY=VALUE"]),
    ("run-unknown-preset", lambda t, m: ["run", "--preset", "huge"], ["preset 'huge'", "not found"]),
    ("run-preset-bad-yaml", lambda t, m: ["run", "--preset", preset_file(t, "seed: 0\nbeta: [0.1\n")],
     ["preset.yaml:3: not valid YAML"]),
    ("run-preset-wrong-type", lambda t, m: ["run", "--preset", preset_file(t, "seed: 0\n\nbeta: high\n")],
     ["preset.yaml:3: field 'beta': expected a finite number", "got 'high'"]),
]


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code


def assert_one_error_line(rc: int, err: str, command: str, needles: list[str]) -> str:
    assert rc == 2, err
    assert "Traceback" not in err, err
    ours = [line for line in err.splitlines() if line.startswith(f"dlma {command}: error: ")]
    assert len(ours) == 1, err
    for needle in needles:
        assert needle in ours[0], f"{needle!r} not in {ours[0]!r}"
    return ours[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, tiny_model_dir, capsys):
    name, make_argv, needles = case
    if name == "model-device-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = make_argv(tmp_path, tiny_model_dir)
    before = files_under(tmp_path)
    runs_before = files_under(Path(__file__).resolve().parents[1] / "runs" / "x")
    rc = run_cli(argv)
    err = capsys.readouterr().err
    needles = [n.replace("{t}", str(tmp_path)) for n in needles]
    assert_one_error_line(rc, err, argv[0], needles)
    assert files_under(tmp_path) == before, "a bad input must leave nothing behind"
    assert files_under(Path(__file__).resolve().parents[1] / "runs" / "x") == runs_before


@pytest.mark.parametrize("argv_of, needles", [
    (lambda t, m: gen(t, m, queries=binary_file(t)), ["q.jsonl:2:", "not UTF-8"]),
    (lambda t, m: gen(t, m, "--n-queries", "zero"), ["expected an integer, got 'zero'"]),
], ids=["binary-garbage", "argparse"])
def test_bad_input_through_a_real_process(argv_of, needles, tmp_path, tiny_model_dir):
    """The same contract seen from outside: exit status 2, our line, no traceback, whatever libraries print."""
    argv = argv_of(tmp_path, tiny_model_dir)
    res = subprocess.run([sys.executable, "-m", "dlma.cli", *argv], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_error_line(res.returncode, res.stderr, argv[0], needles)


# ----------------------------------------------------------------------------------------------------------
# Left out for a documented reason: counted in the manifest, said once on stderr, the rest done correctly.


def test_queries_over_the_word_limit_are_counted(tmp_path, tiny_model_dir, capsys):
    rows = [QUERY, {"id": "long", "prompt": "word " * 50}, {"id": "q3", "prompt": "And cake?"}]
    out = tmp_path / "out"
    rc = run_cli(gen(tmp_path, tiny_model_dir, "--max-query-words", "20", "--max-new-tokens", "4",
                     queries=q(tmp_path, rows)))
    err = capsys.readouterr().err
    assert rc == 0, err
    said = [line for line in err.splitlines() if line.startswith("dlma generate: left out")]
    assert said == [f"dlma generate: left out 1 item(s) (over max_query_words=20): {tmp_path / 'q.jsonl'}:2: "
                    "field 'prompt': 50 words; listed in manifest.json"]
    assert [r["id"] for r in map(json.loads, (out / "pairs.jsonl").read_text().splitlines())] == ["q1", "q3"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_pairs"] == 2 and len(manifest["dropped"]["over_max_query_words"]) == 1


def test_pairs_with_an_empty_response_are_counted_not_scored_as_zero(tmp_path, tiny_model_dir, capsys):
    rows = [PAIR, {**PAIR, "id": "p2", "o2": ""}, {**PAIR, "id": "p3"}]
    rc = run_cli(score(tmp_path, tiny_model_dir, rows))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sum(line.startswith("dlma score: left out 1 item(s)") for line in err.splitlines()) == 1
    scored = [json.loads(x) for x in (tmp_path / "out" / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == ["p1", "p3"]
    assert all(r["self_reward"] != 0 for r in scored)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dropped"]["empty_response"] == [f"{tmp_path / 'pairs.jsonl'}:2: field 'o2': empty response"]


def test_a_response_longer_than_the_limit_is_counted_not_allocated(tmp_path, tiny_model_dir, capsys):
    """The probe: a response of 200,000 words under --score-max-length 64 once tried to allocate 40 GB (the limit
    cut prompts only). It is left out and counted; the others are scored."""
    rows = [PAIR, {**PAIR, "id": "p2", "o1": " ".join(["word"] * 200_000)}, {**PAIR, "id": "p3"}]
    rc = run_cli(score(tmp_path, tiny_model_dir, rows, "--score-max-length", "64"))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert [line for line in err.splitlines() if line.startswith("dlma score: left out")] == [
        f"dlma score: left out 1 item(s) (over score_max_length=64, with no room for the instruction): "
        f"{tmp_path / 'pairs.jsonl'}: id 'p2': field 'o1': 200000 tokens leave 0 of max_length=64, too few to keep "
        "what tells harmless's p+ from p-; listed in manifest.json"]
    scored = [json.loads(x) for x in (tmp_path / "out" / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == ["p1", "p3"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["n_pairs"] == 2 and len(manifest["dropped"]["over_score_max_length"]) == 1


def test_a_pair_no_scorer_can_read_is_left_out_of_every_scorer(tmp_path, tiny_model_dir, capsys):
    """A response that leaves its prompts no room for the instruction: not scored as right or wrong by dlma (its
    four S terms would read one prompt), and left out of the other scorers too, so all compare the same pairs."""
    rows = [{**LABELLED, "id": f"h{i}"} for i in range(3)] + [{**LABELLED, "id": "long", "chosen": WORDS_100}]
    rc = run_cli(pref(tmp_path, tiny_model_dir, "--pref-max-length", "64", "--scorers", "dlma,loglik,length",
                      rows=rows))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sum(line.startswith("dlma pref-acc: left out 1 item(s) (over pref_max_length=64") for line in
               err.splitlines()) == 1
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {s: m["n"] for s, m in metrics["accuracy"].items()} == {"dlma": 3, "loglik": 3, "length": 3}
    predicted = {json.loads(x)["id"] for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()}
    assert predicted == {"h0", "h1", "h2"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["over_pref_max_length"] == [f"{tmp_path / 'h.jsonl'}:4: field 'chosen': 100 tokens leave 0 of "
                                                "max_length=64, too few to keep what tells harmless's p+ from p-"]


def test_a_corrupt_line_in_a_partial_file_is_named_and_its_pair_scored_again(tmp_path, tiny_model_dir, capsys):
    """A resumed stage meets a line that is not JSON in the middle of its part file (a disk fault, an edit): the
    line is named and dropped like a torn one, its pair scored again, and the result is a clean run's."""
    rows = [PAIR, {**PAIR, "id": "p2"}, {**PAIR, "id": "p3"}]
    assert run_cli(score(tmp_path, tiny_model_dir, rows)) == 0
    out = tmp_path / "out"
    clean = (out / "scored.jsonl").read_bytes()
    lines = clean.decode().splitlines(keepends=True)
    (out / "manifest.json").unlink()
    (out / "scored.jsonl").unlink()
    (out / "scored.partial.jsonl").write_text(lines[0] + '{"id": "p2", "s_o1_pos": -1.\x01\n' + lines[2])
    capsys.readouterr()
    assert run_cli(score(tmp_path, tiny_model_dir, rows)) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dlma")]
    assert said == [f"dlma: {out / 'scored.partial.jsonl'}:2: a corrupt line (not a JSON row), dropped; its item will "
                    "be done again"]
    assert (out / "scored.jsonl").read_bytes() == clean


def test_the_pair_study_leaves_out_a_pair_a_variant_cannot_read(tmp_path, tiny_model_dir, capsys):
    """Under the chat rendering the instruction comes first: cut in the middle it stays; a response that leaves no
    room for it is stored as left out, and the pair leaves every candidate."""
    rows = [{**LABELLED, "id": f"h{i}", "prompt": "How do I bake bread? " * 8} for i in range(6)]
    rows.append({**LABELLED, "id": "long", "chosen": WORDS_100})
    rc = run_cli(["pair-study", "--model", tiny_model_dir, "--pref-data", h(tmp_path, rows), "--run",
                  str(tmp_path / "run"), "--study-select", "3", "--pref-max-length", "64", "--study-variants",
                  "harmless,harmless@chat"])
    err = capsys.readouterr().err
    assert rc == 0, err
    folder = tmp_path / "run" / "03b_pair_study"
    scores = [json.loads(x) for x in (folder / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scores if "left_out" in r][:1] == ["long"]
    assert all(r["s_o1_pos"] != r["s_o1_neg"] for r in scores if "left_out" not in r)  # no prompt read twice
    study = json.loads((folder / "study.json").read_text())
    assert study["split"]["n_select"] + study["split"]["n_rest"] == 6
    assert len(json.loads((folder / "manifest.json").read_text())["over_pref_max_length"]) == 1
