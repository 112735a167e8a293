"""The self-rewarding score (the Method page, section 3).

S(o | p, q) = sum over the response tokens of log pi(o_t | p(q), o_<t), summed (not length-normalised),
no EOS, accumulated in float64. For a generated pair (o1 under p+, o2 under p-):

    R(q, o1, o2) = [S(o1|p+,q) - S(o1|p-,q)] - [S(o2|p+,q) - S(o2|p-,q)]

R > 0: the model's own contrast agrees that o1 is the better response. All four S terms are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .data import pairs_file, read_pairs, usable
from .distributed import ShardedJSONL
from .errors import check_fields
from .folder import StageFolder
from .logprobs import contrast_spans, fit_prompt, responses_ids, sequence_logprobs, shared_prompt_logprobs
from .params import PairName, Rendering, Scoring, SharedPrompts, documented, param
from .prompts import PAIRS, RENDERINGS, PromptPair, get_pair, prompts_ids, render, with_custom_pairs

SCORE_KEYS = ("s_o1_pos", "s_o1_neg", "s_o2_pos", "s_o2_neg")


@documented
@dataclass
class ScoreConfig(SharedPrompts, Scoring, Rendering, PairName):
    score_max_length: int = param(
        1024, "prompt + response tokens when scoring pairs: a longer prompt is cut from the left, or in its middle "
              "where that would cut what tells p+ from p- (a chat system message); a pair whose response leaves no "
              "room for that is left out and counted")

    def __post_init__(self):
        check_score_settings(self, "score_max_length")

    def check_pairs(self, prompt_pairs) -> None:
        get_pair(self.pair, prompt_pairs, "ScoreConfig: pair")


def check_score_settings(cfg, max_length: str) -> None:
    """The settings every log-probability scorer shares (ScoreConfig, PrefAccConfig), by their field names."""
    check_fields(cfg, [
        (cfg.score_batch_size >= 1, ("score_batch_size",), "must be >= 1"),
        (getattr(cfg, max_length) >= 2, (max_length,), "must be >= 2 (a prompt token and a response token)"),
        (cfg.rendering in RENDERINGS, ("rendering",), f"must be one of {', '.join(RENDERINGS)}"),
        (cfg.max_batch_tokens >= 0, ("max_batch_tokens",), "must be >= 0 (0: by count on a CPU, auto on a GPU)"),
    ])


def self_reward_terms(
    model,
    tokenizer,
    items: list[tuple[list[str], str, str]],
    pair: PromptPair,
    rendering: str = "affix",
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int | None = 1024,
    desc: str | None = "self-reward",
    share_prompts: bool = False,
    max_tokens: int = 0,
) -> list[dict]:
    """For (turns, o1, o2) items: the four S terms and R, as plain dicts. By default one sequence per S;
    with `share_prompts`, each of p+ and p- is read once with both responses behind it (the same S, less
    work: see logprobs.shared_prompt_logprobs). A prompt cut to `max_length` keeps what tells p+ from p-
    (`logprobs.fit_prompt`); an item where it cannot is refused: `unreadable` finds those first."""
    contrast = contrast_prompts_of([turns for turns, _, _ in items], pair, rendering, tokenizer)  # (p+, p-) per item
    both = pairwise(responses_ids([o for _, o1, o2 in items for o in (o1, o2)], tokenizer))  # (o1, o2) per item
    spans = [contrast_spans(*ps) for ps in contrast]
    if share_prompts:  # p+ once with o1 and o2 behind it, then p- likewise
        groups = shared_prompt_logprobs(model, [p for ps in contrast for p in ps], [list(rs) for rs in both
                                                                                  for _ in range(2)],
                                        tokenizer.pad_token_id, batch_size, max_length, desc, max_tokens,
                                        keep=[k for ks in spans for k in ks])
        s = [v for pos, neg in zip(groups[::2], groups[1::2], strict=True) for v in (pos[0], neg[0], pos[1], neg[1])]
    else:  # one sequence per term, in the order of SCORE_KEYS
        prompts = [p for (p_pos, p_neg) in contrast for p in (p_pos, p_neg, p_pos, p_neg)]
        responses = [r for (r1, r2) in both for r in (r1, r1, r2, r2)]
        s = sequence_logprobs(model, prompts, responses, tokenizer.pad_token_id, batch_size, padding_side,
                              max_length, desc, max_tokens, keep=[k for ks in spans for k in (*ks, *ks)])
    rows = []
    for k in range(len(items)):
        terms = dict(zip(SCORE_KEYS, s[4 * k : 4 * k + 4], strict=True))
        terms["self_reward"] = self_reward(**terms)
        rows.append(terms)
    return rows


def unreadable(items: list[tuple[list[str], str, str]], tokenizer, max_length: int, pair: PromptPair | None = None,
               rendering: str = "affix", names: tuple[str, str] = ("o1", "o2")) -> list[str | None]:
    """For (turns, o1, o2) items, None where both responses can be read behind their prompts in `max_length`
    tokens, else why not. Under a prompt pair: a response so long that its prompts, cut to what it leaves, would
    lose what tells p+ from p- (the S terms would read one prompt twice and R would be 0 or noise). `pair` None:
    under the plain prompt, which needs one token of room. Such a pair is left out and counted, never scored."""
    lengths = pairwise([len(r) for r in responses_ids([o for _, o1, o2 in items for o in (o1, o2)], tokenizer)])
    contrast = contrast_prompts_of([turns for turns, _, _ in items], pair, rendering, tokenizer) if pair else None
    out = []
    for k, ns in enumerate(lengths):
        prompts = contrast[k] if pair else ()
        spans = contrast_spans(*prompts) if pair else ()
        why = None
        for name, n in zip(names, ns, strict=True):
            room = max_length - n
            if room < 1 or any(fit_prompt(p, room, s) is None for p, s in zip(prompts, spans, strict=True)):
                need = f"to keep what tells {pair.name}'s p+ from p-" if pair else "for its prompt"
                why = f"field '{name}': {n} tokens leave {max(room, 0)} of max_length={max_length}, too few {need}"
                break
        out.append(why)
    return out


def pairwise(values: list) -> list[tuple]:
    """[a, b, c, d] -> [(a, b), (c, d)]."""
    return list(zip(values[::2], values[1::2], strict=True))


def contrast_prompts_of(contexts: list[list[str]], pair: PromptPair, rendering: str, tokenizer) -> list[tuple]:
    """`contrast_prompts` of many contexts, each side in one call of the tokenizer."""
    sides = [prompts_ids([render(turns, pair, side, rendering, tokenizer) for turns in contexts], tokenizer, rendering)
             for side in ("pos", "neg")]
    return list(zip(*sides, strict=True))


def contrast_prompts(turns: list[str], pair: PromptPair, rendering: str, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of p+(q) and p-(q): the two prompts a contrastive score reads a response under."""
    return contrast_prompts_of([turns], pair, rendering, tokenizer)[0]


def contrast(s_pos: float, s_neg: float) -> float:
    """C(o) = S(o|p+) - S(o|p-): how much more likely the response is when the model is asked for p+."""
    return s_pos - s_neg


def self_reward(s_o1_pos: float, s_o1_neg: float, s_o2_pos: float, s_o2_neg: float) -> float:
    """R = [S(o1|p+) - S(o1|p-)] - [S(o2|p+) - S(o2|p-)] = C(o1) - C(o2)."""
    return contrast(s_o1_pos, s_o1_neg) - contrast(s_o2_pos, s_o2_neg)


def run_score(model_cfg, pairs, cfg: ScoreConfig, out, chunk: int = 32, model=None,
              prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> list[dict]:
    """Stage 2 (`dlma score`): `scored.jsonl` in `out.out`, each pair of `pairs.pairs` with its four S terms
    and R (under the row's own prompt pair and rendering, if it names them; the pairs among `prompt_pairs`)."""
    folder = StageFolder(out.out, "score", model_cfg, model)
    empty, too_long = [], []
    rows_in = read_pairs(pairs.pairs, dropped=empty, pairs=prompt_pairs)
    rows_in = readable(rows_in, folder.tokenizer(), cfg, str(pairs_file(pairs.pairs)), too_long, prompt_pairs)
    params = {"pairs": str(pairs.pairs), **asdict(cfg),
              **with_custom_pairs((p.get("pair") or cfg.pair for p in rows_in), prompt_pairs)}
    at = folder.begin(params, {"pairs": pairs_file(pairs.pairs)}, out.force, launched=True)
    folder.note_dropped(empty, "an empty response has no token to score")
    folder.note_dropped(too_long, f"over score_max_length={cfg.score_max_length}, with no room for the instruction")
    store = ShardedJSONL(folder.path / "scored.jsonl", at=at)
    chunks = [rows_in[k : k + chunk] for k in range(0, len(rows_in), chunk)]  # each process: every world-th chunk
    settings = [[(p.get("pair") or cfg.pair, p.get("rendering") or cfg.rendering) for p in part] for part in chunks]
    order = [p["id"] for part, setting in zip(chunks, settings, strict=True) for s in dict.fromkeys(setting)
             for p, ps in zip(part, setting, strict=True) if ps == s]  # grouped by setting within a chunk
    todo = [(k, part) for k, part in at.mine(chunks) if not all(p["id"] in store.done for p in part)]
    if todo and not store.finished:
        for k, part in todo:
            rows = []
            for name, rendering in dict.fromkeys(settings[k]):  # one call per (prompt pair, rendering)
                group = [p for p, s in zip(part, settings[k], strict=True) if s == (name, rendering)]
                terms = self_reward_terms(*folder.model(), [(p["turns"], p["o1"], p["o2"]) for p in group],
                                          get_pair(name, prompt_pairs), rendering, cfg.score_batch_size,
                                          max_length=cfg.score_max_length, desc=f"score {k + 1}/{len(chunks)}",
                                          share_prompts=cfg.share_prompts, max_tokens=cfg.max_batch_tokens)
                rows += [{**p, "pair": name, **t} for p, t in zip(group, terms, strict=True)]
            # a chunk whose rows a corrupt line cost is scored whole (the same batches, the same numbers) and only
            # its missing rows appended; grouped by setting within a chunk: the order the published run's split used
            store.append([r for r in rows if r["id"] not in store.done])
    store.finish(order=order)
    folder.finish(n_pairs=len(store.rows), dropped={"empty_response": empty, "over_score_max_length": too_long},
                  processes=at.world)
    return store.rows


def readable(rows: list[dict], tokenizer, cfg: ScoreConfig, source: str, sink: list[str],
             prompt_pairs: Mapping[str, PromptPair] = PAIRS) -> list[dict]:
    """The pairs whose R can be read within `score_max_length` (`unreadable`), each under its own prompt pair and
    rendering; why the others are left out is appended to `sink`. None left is one error."""
    settings = [(p.get("pair") or cfg.pair, p.get("rendering") or cfg.rendering) for p in rows]
    why = {}
    for name, rendering in dict.fromkeys(settings):
        group = [p for p, s in zip(rows, settings, strict=True) if s == (name, rendering)]
        found = unreadable([(p["turns"], p["o1"], p["o2"]) for p in group], tokenizer, cfg.score_max_length,
                           get_pair(name, prompt_pairs), rendering)
        why.update({p["id"]: f"{source}: id {p['id']!r}: {w}" for p, w in zip(group, found, strict=True) if w})
    kept = [p for p in rows if p["id"] not in why]
    return usable(source, kept, [why[p["id"]] for p in rows if p["id"] in why], sink, "pairs")


def summary(rows: list[dict], out) -> str:
    neg = sum(r["self_reward"] < 0 for r in rows)
    return f"{len(rows)} pairs scored, {neg} with R < 0 -> {out.out}/scored.jsonl"
