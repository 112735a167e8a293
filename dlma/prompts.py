"""Contrastive prompt pairs (p+, p-) and how a query is rendered under them (the Method page, section 1).

Two renderings, recorded in every manifest:
- `affix`: the paper's raw text, the query inserted at `{}`, BOS prepended, no system prompt.
- `chat`: the model's chat template, the pair's instruction as a system message (or prepended to the
  first user turn where the template has no system role).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

from .errors import DLMAError

RENDERINGS = ("affix", "chat")


@dataclass(frozen=True)
class PromptPair:
    name: str
    pos: str  # p+ affix, query at {}
    neg: str  # p- affix
    pos_system: str = ""  # p+ as a system message for the `chat` rendering
    neg_system: str = ""

    def __post_init__(self):
        for side in (self.pos, self.neg):
            if side.count("{}") != 1:
                raise DLMAError(f"prompt pair '{self.name}': each affix needs exactly one '{{}}' for the query")


def _affix(attr: str) -> str:
    return "USER: {}\nASSISTANT" + (f"({attr})" if attr else "") + ":\n"


# The built-in pairs, read-only: a user's pairs (a pairs file) are a value handed to the stages that read them
# (`prompt_pairs`), never added here, so what one command or test defines cannot leak into another.
PAIRS: Mapping[str, PromptPair] = MappingProxyType({
    "harmless": PromptPair(
        "harmless",
        _affix("law-abiding, ethical, inoffensive response"),
        _affix("illegal, unethical, toxic response"),
        "Give a law-abiding, ethical, inoffensive response.",
        "Give an illegal, unethical, toxic response.",
    ),
    "helpful": PromptPair(
        "helpful",
        _affix("giving a helpful response"),
        _affix("giving an unhelpful response"),
        "Give a helpful response.",
        "Give an unhelpful response.",
    ),
    "neutral": PromptPair("neutral", _affix(""), _affix("")),
})


BUILT_IN = frozenset(PAIRS)


def get_pair(name: str, pairs: Mapping[str, PromptPair] = PAIRS, where: str = "prompt pair") -> PromptPair:
    """The pair `name` among `pairs` (the built-in ones, or those `prompt_pairs` read), or one line naming it."""
    try:
        return pairs[name]
    except KeyError:
        raise DLMAError(f"{where}: unknown prompt pair '{name}' (known: {', '.join(sorted(pairs))})") from None


def prompt_pairs(path: str | Path | None = None) -> Mapping[str, PromptPair]:
    """The pairs a stage can name: the built-in ones and those of the pairs file at `path` (none if empty)."""
    return MappingProxyType({**PAIRS, **load_pairs_file(path)}) if path else PAIRS


def pairs_from_definitions(definitions: dict) -> Mapping[str, PromptPair]:
    """The pairs a stage read, from the definitions its params.json recorded (`with_custom_pairs`)."""
    return MappingProxyType({**PAIRS, **{n: PromptPair(**d) for n, d in definitions.items()}})


PAIR_FIELDS = ("pos", "neg", "pos_attributes", "neg_attributes", "pos_system", "neg_system")


def load_pairs_file(path: str | Path | None) -> dict[str, PromptPair]:
    """The prompt pairs of a YAML or JSON file, by name (`prompt_pairs` adds the built-in ones).

    The file maps each pair's name to either its two affixes (`pos`, `neg`, the query at `{}`), or the words
    that go in the paper's affix (`pos_attributes: "harmless, helpful"` gives "USER: {}\nASSISTANT(harmless,
    helpful):\n"), and optionally `pos_system` / `neg_system` for the chat rendering. An empty path does
    nothing. Any fault is one error naming the file, the line and the field."""
    import yaml

    if not path:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DLMAError(f"{path}: no such file (a YAML or JSON file of prompt pairs)")
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        raise DLMAError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML or JSON "
                        f"({getattr(e, 'problem', None) or str(e).splitlines()[0]})") from None
    if not isinstance(root, yaml.MappingNode) or not root.value:
        raise DLMAError(f"{path}:1: expected a mapping of pair name -> {{pos, neg}} "
                        "or {pos_attributes, neg_attributes}")
    pairs, first = {}, {}
    for key, node in root.value:
        line = key.start_mark.line + 1
        if not isinstance(key, yaml.ScalarNode):
            raise DLMAError(f"{path}:{line}: a pair's name must be a string, got a {key.id}")
        name = key.value
        where = f"{path}:{line}: field '{name}'"
        if name in first:  # YAML would let the second silently win
            raise DLMAError(f"{where}: pair '{name}' is defined twice (first at line {first[name]})")
        first[name] = line
        if name in BUILT_IN:
            raise DLMAError(f"{where}: '{name}' is a built-in pair; give yours another name")
        if not isinstance(node, yaml.MappingNode):
            raise DLMAError(f"{where}: expected a mapping with pos and neg (or pos_attributes and neg_attributes)")
        fields = {k.value: (v, k.start_mark.line + 1) for k, v in node.value}
        for k, (v, ln) in fields.items():
            if k not in PAIR_FIELDS:
                raise DLMAError(f"{path}:{ln}: field '{name}.{k}': unknown (valid: {', '.join(PAIR_FIELDS)})")
            if not isinstance(v, yaml.ScalarNode) or not str(v.value).strip():
                raise DLMAError(f"{path}:{ln}: field '{name}.{k}': expected a non-empty string")
        text = {k: v.value for k, (v, _) in fields.items()}
        if {"pos", "neg"} <= set(text):
            pos, neg = text["pos"], text["neg"]
        elif {"pos_attributes", "neg_attributes"} <= set(text):
            pos, neg = _affix(text["pos_attributes"]), _affix(text["neg_attributes"])
        else:
            raise DLMAError(f"{where}: needs pos and neg, or pos_attributes and neg_attributes")
        for side, affix in (("pos", pos), ("neg", neg)):
            if affix.count("{}") != 1:
                raise DLMAError(f"{path}:{fields.get(side, fields.get(side + '_attributes'))[1]}: field "
                                f"'{name}.{side}': needs exactly one '{{}}' where the query goes")
        pairs[name] = PromptPair(name, pos, neg, text.get("pos_system", ""), text.get("neg_system", ""))
    return pairs


def with_custom_pairs(names, pairs: Mapping[str, PromptPair]) -> dict:
    """{"pair_definitions": ...}: the definitions of the user-defined pairs among `names` (of `pairs`), for a
    stage's params.json, so that a changed pairs file is a change of parameters (the built-in pairs are fixed by
    the code's version); nothing when only built-in pairs are used (params stay as they were)."""
    defs = {n: asdict(pairs[n]) for n in sorted(set(names)) if n not in BUILT_IN}
    return {"pair_definitions": defs} if defs else {}


def flatten_context(turns: list[str]) -> str:
    """turn0 + "\\nASSISTANT: " + turn1 + "\\nUSER: " + turn2 ... (the released code's flattening)."""
    out = turns[0]
    for i, turn in enumerate(turns[1:], start=1):
        out += ("\nASSISTANT: " if i % 2 else "\nUSER: ") + turn
    return out


def render(turns: list[str], pair: PromptPair, side: str, rendering: str = "affix", tokenizer=None) -> str:
    """The prompt text for a query (its turns, user first) under p+ (`side='pos'`) or p- (`'neg'`).

    For `affix`, the BOS token is not in the text: `prompt_ids` adds it, so it is never tokenized twice.
    """
    if side not in ("pos", "neg"):
        raise DLMAError(f"side must be 'pos' or 'neg', got '{side}'")
    if rendering == "affix":
        return (pair.pos if side == "pos" else pair.neg).replace("{}", flatten_context(turns))
    if rendering == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DLMAError("rendering 'chat' needs a tokenizer with a chat template; use rendering 'affix'")
        system = pair.pos_system if side == "pos" else pair.neg_system
        messages = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
        ]
        if system:
            messages = _with_system(messages, system, tokenizer)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise DLMAError(f"unknown rendering '{rendering}' (valid: {', '.join(RENDERINGS)})")


def _with_system(messages: list[dict], system: str, tokenizer) -> list[dict]:
    """A system message where the template renders one, else the instruction before the first user turn."""
    probe = [{"role": "system", "content": "\x00SYS\x00"}, {"role": "user", "content": "q"}]
    try:
        supports_system = "\x00SYS\x00" in tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # templates that raise on a system role (e.g. Gemma's)
        supports_system = False
    if supports_system:
        return [{"role": "system", "content": system}, *messages]
    first = {**messages[0], "content": f"{system}\n\n{messages[0]['content']}"}
    return [first, *messages[1:]]


def prompt_ids(text: str, tokenizer, rendering: str = "affix") -> list[int]:
    """Token ids of a rendered prompt: BOS first for `affix` (as the paper's LLaMA tokenizer did)."""
    return prompts_ids([text], tokenizer, rendering)[0]


def prompts_ids(texts: list[str], tokenizer, rendering: str = "affix") -> list[list[int]]:
    """`prompt_ids` of many prompts in one call of the tokenizer (the same ids, in a fraction of the time)."""
    bos = tokenizer.bos_token_id
    out = tokenizer(texts, add_special_tokens=False).input_ids if texts else []
    if rendering == "affix" and bos is not None:
        out = [ids if ids and ids[0] == bos else [bos, *ids] for ids in out]
    return out


def stop_strings(rendering: str) -> list[str]:
    """Text that starts a new turn: generation ends there (the cut is made at a token boundary)."""
    # chat templates end a turn with the EOS token itself
    return ["\nUSER:", "\nASSISTANT", "\nHuman:", "\nAssistant:"] if rendering == "affix" else []


def policy_prompt(turns: list[str], rendering: str = "affix", tokenizer=None) -> str:
    """The prompt DLMA trains and evaluates the policy on: the plain query, no contrastive instruction
    (the Method page, section 4), as text with the BOS token written out for `affix` so any tokenizer keeps it."""
    text = render(turns, PAIRS["neutral"], "pos", rendering, tokenizer)
    if rendering == "affix" and tokenizer is not None and tokenizer.bos_token:
        text = tokenizer.bos_token + text
    return text
