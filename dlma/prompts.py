"""Contrastive prompt pairs (p+, p-) and how a query is rendered under them (SPEC section 1).

Two renderings, recorded in every manifest:
- `affix`: the paper's raw text, the query inserted at `{}`, BOS prepended, no system prompt.
- `chat`: the model's chat template, the pair's instruction as a system message (or prepended to the
  first user turn where the template has no system role).
"""

from __future__ import annotations

from dataclasses import dataclass

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


PAIRS: dict[str, PromptPair] = {
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
}


def get_pair(name: str, where: str = "prompt pair") -> PromptPair:
    try:
        return PAIRS[name]
    except KeyError:
        raise DLMAError(f"{where}: unknown prompt pair '{name}' (known: {', '.join(sorted(PAIRS))})") from None


def register_pair(pair: PromptPair) -> PromptPair:
    """Add a user-defined pair (e.g. one of RLCD's 16) so it can be named like the built-in ones."""
    PAIRS[pair.name] = pair
    return pair


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
    ids = tokenizer(text, add_special_tokens=False).input_ids
    bos = tokenizer.bos_token_id
    if rendering == "affix" and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def stop_strings(rendering: str) -> list[str]:
    """Text that starts a new turn: generation ends there (the cut is made at a token boundary)."""
    # chat templates end a turn with the EOS token itself
    return ["\nUSER:", "\nASSISTANT", "\nHuman:", "\nAssistant:"] if rendering == "affix" else []


def policy_prompt(turns: list[str], rendering: str = "affix", tokenizer=None) -> str:
    """The prompt DLMA trains and evaluates the policy on: the plain query, no contrastive instruction
    (SPEC section 4), as text with the BOS token written out for `affix` so any tokenizer keeps it."""
    text = render(turns, PAIRS["neutral"], "pos", rendering, tokenizer)
    if rendering == "affix" and tokenizer is not None and tokenizer.bos_token:
        text = tokenizer.bos_token + text
    return text
