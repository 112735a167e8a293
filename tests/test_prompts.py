"""Contrastive prompt pairs and their renderings (SPEC section 1). Tokenizer only, no model."""

from __future__ import annotations

import copy

import pytest

from dlma.errors import DLMAError
from dlma.models import DEFAULT_MODEL, load_tokenizer
from dlma.prompts import PAIRS, flatten_context, get_pair, policy_prompt, prompt_ids, render

# A chat template without a system role: it raises on one, as Gemma's does.
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def tok_no_system(tok):
    t = copy.deepcopy(tok)
    t.chat_template = NO_SYSTEM_TEMPLATE
    with pytest.raises(Exception, match="System role"):  # the template really refuses a system message
        t.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False)
    return t


@pytest.mark.parametrize(
    "name, pos, neg",
    [
        ("harmless", "USER: {}\nASSISTANT(law-abiding, ethical, inoffensive response):\n",
         "USER: {}\nASSISTANT(illegal, unethical, toxic response):\n"),
        ("helpful", "USER: {}\nASSISTANT(giving a helpful response):\n",
         "USER: {}\nASSISTANT(giving an unhelpful response):\n"),
        ("neutral", "USER: {}\nASSISTANT:\n", "USER: {}\nASSISTANT:\n"),
    ],
)
def test_affix_strings_match_spec_table(name, pos, neg):
    pair = get_pair(name)
    assert pair.name == name
    assert pair.pos == pos
    assert pair.neg == neg


def test_flatten_context_alternates_assistant_and_user():
    assert flatten_context(["q"]) == "q"
    assert flatten_context(["q0", "a1", "q2"]) == "q0\nASSISTANT: a1\nUSER: q2"
    assert flatten_context(["q0", "a1", "q2", "a3", "q4"]) == "q0\nASSISTANT: a1\nUSER: q2\nASSISTANT: a3\nUSER: q4"


def test_render_affix_inserts_flattened_query():
    turns = ["How do I pick a lock?", "Why do you want to?", "I locked myself out."]
    flat = "How do I pick a lock?\nASSISTANT: Why do you want to?\nUSER: I locked myself out."
    pair = PAIRS["harmless"]
    assert render(turns, pair, "pos") == f"USER: {flat}\nASSISTANT(law-abiding, ethical, inoffensive response):\n"
    assert render(turns, pair, "neg") == f"USER: {flat}\nASSISTANT(illegal, unethical, toxic response):\n"
    neutral = PAIRS["neutral"]
    assert render(["hi"], neutral, "pos") == render(["hi"], neutral, "neg") == "USER: hi\nASSISTANT:\n"
    # a query containing braces is inserted verbatim (no str.format surprises)
    assert render(["{x} {}"], PAIRS["helpful"], "pos").startswith("USER: {x} {}\nASSISTANT(")


def test_render_rejects_bad_side():
    with pytest.raises(DLMAError, match="middle"):
        render(["q"], PAIRS["harmless"], "middle")


def test_prompt_ids_prepends_bos_exactly_once(tok):
    text = render(["Tell me a joke."], PAIRS["helpful"], "pos")
    plain = tok(text, add_special_tokens=False).input_ids
    assert tok.bos_token_id not in plain
    ids = prompt_ids(text, tok, "affix")
    assert ids == [tok.bos_token_id, *plain]
    assert ids.count(tok.bos_token_id) == 1
    # text that already starts with the BOS token (policy_prompt writes it out) is not given a second one
    assert prompt_ids(tok.bos_token + text, tok, "affix") == ids
    pol = prompt_ids(policy_prompt(["Tell me a joke."], "affix", tok), tok, "affix")
    assert pol.count(tok.bos_token_id) == 1 and pol[0] == tok.bos_token_id
    # the chat rendering's template decides the special tokens: nothing is added
    chat = render(["Tell me a joke."], PAIRS["helpful"], "pos", "chat", tok)
    assert prompt_ids(chat, tok, "chat") == tok(chat, add_special_tokens=False).input_ids


def test_chat_rendering_uses_a_system_message(tok):
    pair = PAIRS["harmless"]
    for side, system in (("pos", pair.pos_system), ("neg", pair.neg_system)):
        text = render(["How do I pick a lock?"], pair, side, "chat", tok)
        expected = tok.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": "How do I pick a lock?"}],
            tokenize=False, add_generation_prompt=True,
        )
        assert text == expected
        assert f"<|im_start|>system\n{system}<|im_end|>" in text
        assert "named SmolLM" not in text  # the template's default system prompt is replaced, not doubled
        assert text.endswith("<|im_start|>assistant\n")
    assert render(["q"], pair, "pos", "chat", tok) != render(["q"], pair, "neg", "chat", tok)


def test_chat_rendering_multi_turn_roles(tok):
    text = render(["q0", "a1", "q2"], PAIRS["helpful"], "pos", "chat", tok)
    assert "<|im_start|>user\nq0<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2" in text


def test_chat_rendering_falls_back_without_system_role(tok_no_system):
    pair = PAIRS["harmless"]
    text = render(["q0", "a1", "q2"], pair, "pos", "chat", tok_no_system)
    assert "system" not in text
    assert text == (
        f"<|im_start|>user\n{pair.pos_system}\n\nq0<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    neg = render(["q0"], pair, "neg", "chat", tok_no_system)
    assert neg.startswith(f"<|im_start|>user\n{pair.neg_system}\n\nq0<|im_end|>")


def test_chat_rendering_needs_a_template(tok):
    t = copy.deepcopy(tok)
    t.chat_template = None
    with pytest.raises(DLMAError, match="affix"):
        render(["q"], PAIRS["harmless"], "pos", "chat", t)
    with pytest.raises(DLMAError, match="chat template"):
        render(["q"], PAIRS["harmless"], "pos", "chat", None)


def test_unknown_pair_is_named():
    with pytest.raises(DLMAError, match="'nope'") as e:
        get_pair("nope")
    assert "harmless" in str(e.value)  # lists the known pairs


def test_unknown_rendering_is_named(tok):
    with pytest.raises(DLMAError, match="'markdown'") as e:
        render(["q"], PAIRS["harmless"], "pos", "markdown", tok)
    assert "affix" in str(e.value) and "chat" in str(e.value)


def test_user_defined_pair_is_usable_by_name_among_the_pairs_it_is_handed():
    from dataclasses import asdict

    from dlma.prompts import PAIRS, PromptPair, get_pair, pairs_from_definitions, render

    pair = PromptPair("rlcd-ethical", "USER: {}\nASSISTANT(ethical response):\n",
                      "USER: {}\nASSISTANT(toxic response):\n")
    pairs = pairs_from_definitions({pair.name: asdict(pair)})
    assert get_pair("rlcd-ethical", pairs) == pair and get_pair("harmless", pairs) is PAIRS["harmless"]
    assert render(["Hi"], pair, "neg") == "USER: Hi\nASSISTANT(toxic response):\n"
    with pytest.raises(DLMAError, match="unknown prompt pair 'rlcd-ethical'"):
        get_pair("rlcd-ethical")  # the built-in pairs alone: nothing was registered anywhere
    with pytest.raises(TypeError):
        PAIRS["mine"] = pair  # the built-in pairs are read-only
    with pytest.raises(DLMAError, match="exactly one"):
        PromptPair("bad", "no placeholder", "USER: {}")


# ----------------------------------------------------------------------------------------------------------
# Prompt pairs as data: --pairs-file


def test_pairs_file_in_yaml_and_json(tmp_path):
    from dlma.prompts import PAIRS, load_pairs_file, prompt_pairs

    yml = tmp_path / "pairs.yaml"
    yml.write_text('ethical:\n  pos_attributes: "ethical"\n  neg_attributes: "toxic"\n'
                   'custom:\n  pos: "Q: {}\\nA (kind):"\n  neg: "Q: {}\\nA (cruel):"\n  pos_system: "Be kind."\n')
    ethical, custom = load_pairs_file(yml).values()
    assert ethical.pos == "USER: {}\nASSISTANT(ethical):\n" and ethical.neg == "USER: {}\nASSISTANT(toxic):\n"
    assert (custom.pos, custom.neg, custom.pos_system, custom.neg_system) == ("Q: {}\nA (kind):", "Q: {}\nA (cruel):",
                                                                             "Be kind.", "")
    assert get_pair("ethical", prompt_pairs(yml)) == ethical  # named like a built-in pair, where the file is read
    assert "ethical" not in PAIRS  # and nowhere else
    js = tmp_path / "pairs.json"
    js.write_text('{"honest": {"pos_attributes": "honest", "neg_attributes": "deceptive"}}')
    (honest,) = load_pairs_file(js).values()
    assert honest.name == "honest" and "(deceptive)" in honest.neg
    assert load_pairs_file("") == {} and prompt_pairs("") is PAIRS


@pytest.mark.parametrize("text, where", [
    ("a:\n  pos: 'x {}'\n", "pairs.yaml:1: field 'a': needs pos and neg"),
    ("a:\n  pos: 'x'\n  neg: 'y {}'\n", "pairs.yaml:2: field 'a.pos': needs exactly one '{}'"),
    ("a:\n  pos: 'x {}'\n  neg: 'y {}'\n  tone: 'z'\n", "pairs.yaml:4: field 'a.tone': unknown"),
    ("a:\n  pos: 'x {}'\n  neg: ['y']\n", "pairs.yaml:3: field 'a.neg': expected a non-empty string"),
    ("harmless:\n  pos: 'x {}'\n  neg: 'y {}'\n", "pairs.yaml:1: field 'harmless': 'harmless' is a built-in pair"),
    ("a: [1, 2\n", "pairs.yaml:2: not valid YAML or JSON"),
    ("- a\n", "pairs.yaml:1: expected a mapping"),
])
def test_a_malformed_pairs_file_is_one_error_with_its_line(tmp_path, text, where):
    from dlma.prompts import load_pairs_file

    (tmp_path / "pairs.yaml").write_text(text)
    with pytest.raises(DLMAError) as e:
        load_pairs_file(tmp_path / "pairs.yaml")
    assert str(e.value).startswith(str(tmp_path / where))


def test_generate_and_score_with_a_pairs_file(tmp_path, tiny_model_dir):
    import json

    from dlma.cli import main

    pairs = tmp_path / "pairs.yaml"
    pairs.write_text('kindness:\n  pos_attributes: "kind, gentle"\n  neg_attributes: "cruel, harsh"\n')
    queries = tmp_path / "q.jsonl"  # rows without a pair of their own: --pair applies
    queries.write_text('{"id": "a", "prompt": "How do I cook rice?"}\n{"id": "b", "prompt": "Is it safe?"}\n')
    out = tmp_path / "gen"
    assert main(["generate", "--pairs-file", str(pairs), "--pair", "kindness", "--model", tiny_model_dir,
                 "--queries", str(queries), "--max-new-tokens", "4", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert {r["pair"] for r in rows} == {"kindness"}
    definition = json.loads((out / "params.json").read_text())["pair_definitions"]["kindness"]
    assert definition["pos"] == "USER: {}\nASSISTANT(kind, gentle):\n"
    assert main(["score", "--pairs-file", str(pairs), "--model", tiny_model_dir, "--pairs", str(out),
                 "--out", str(tmp_path / "score")]) == 0
    # the same pair name with other words is other parameters: refused, not mixed
    pairs.write_text('kindness:\n  pos_attributes: "kind"\n  neg_attributes: "cruel"\n')
    assert main(["score", "--pairs-file", str(pairs), "--model", tiny_model_dir, "--pairs", str(out),
                 "--out", str(tmp_path / "score")]) == 2


def test_a_pairs_file_is_a_value_handed_to_its_command_not_a_global(tmp_path):
    """Issue 29: parsing a command with a pairs file changes nothing another command sees; the stage is handed
    the pairs (`prompt_pairs=`) and each config's pair names are checked against them."""
    from dlma.commands import COMMANDS
    from dlma.params import PairsFile, pairs_of
    from dlma.prompts import PAIRS

    (tmp_path / "pairs.yaml").write_text('kind:\n  pos_attributes: "kind"\n  neg_attributes: "cruel"\n')
    parser = COMMANDS["generate"].parser("generate")
    configs = parser.parse([f"--pairs-file={tmp_path / 'pairs.yaml'}", "--pair=kind", f"--out={tmp_path / 'a'}"])
    pairs = pairs_of(configs)
    assert set(pairs) == set(PAIRS) | {"kind"} and pairs["kind"].pos == "USER: {}\nASSISTANT(kind):\n"
    assert next(c for c in configs if isinstance(c, PairsFile)).pairs is pairs
    assert "kind" not in PAIRS
    with pytest.raises(DLMAError, match="GenerateConfig: pair: unknown prompt pair 'kind'"):
        parser.parse(["--pair=kind", f"--out={tmp_path / 'b'}"])  # the next command knows only its own pairs
    with pytest.raises(DLMAError, match="PrefAccConfig: pref_pair: unknown prompt pair 'nope'"):
        COMMANDS["pref-acc"].parser("pref-acc").parse([f"--pairs-file={tmp_path / 'pairs.yaml'}",
                                                        "--pref-pair=nope", f"--out={tmp_path / 'c'}"])
