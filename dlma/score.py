"""The self-rewarding score (SPEC section 3).

S(o | p, q) = sum over the response tokens of log pi(o_t | p(q), o_<t), summed (not length-normalised),
no EOS, accumulated in float64. For a generated pair (o1 under p+, o2 under p-):

    R(q, o1, o2) = [S(o1|p+,q) - S(o1|p-,q)] - [S(o2|p+,q) - S(o2|p-,q)]

R > 0: the model's own contrast agrees that o1 is the better response. All four S terms are kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import check_fields
from .logprobs import response_ids, sequence_logprobs, shared_prompt_logprobs
from .params import documented
from .prompts import RENDERINGS, PromptPair, get_pair, prompt_ids, render

SCORE_KEYS = ("s_o1_pos", "s_o1_neg", "s_o2_pos", "s_o2_neg")


@documented
@dataclass
class ScoreConfig:
    pair: str = "harmless"
    rendering: str = "affix"
    score_batch_size: int = 8
    score_max_length: int = 1024
    max_batch_tokens: int = 0
    share_prompts: bool = True

    def __post_init__(self):
        check_score_settings(self, "pair", "score_max_length")


def check_score_settings(cfg, pair: str, max_length: str) -> None:
    """The settings every log-probability scorer shares (ScoreConfig, PrefAccConfig), by their field names."""
    check_fields(cfg, [
        (cfg.score_batch_size >= 1, ("score_batch_size",), "must be >= 1"),
        (getattr(cfg, max_length) >= 2, (max_length,), "must be >= 2 (a prompt token and a response token)"),
        (cfg.rendering in RENDERINGS, ("rendering",), f"must be one of {', '.join(RENDERINGS)}"),
        (cfg.max_batch_tokens >= 0, ("max_batch_tokens",), "must be >= 0 (0: by count on a CPU, auto on a GPU)"),
    ])
    get_pair(getattr(cfg, pair), f"{type(cfg).__name__}: {pair}")


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
    work: see logprobs.shared_prompt_logprobs)."""
    contrast, both = [], []  # per item: (p+, p-) and (o1, o2) as token ids
    for turns, o1, o2 in items:
        contrast.append(contrast_prompts(turns, pair, rendering, tokenizer))
        both.append((response_ids(o1, tokenizer), response_ids(o2, tokenizer)))
    if share_prompts:  # p+ once with o1 and o2 behind it, then p- likewise
        groups = shared_prompt_logprobs(model, [p for ps in contrast for p in ps], [list(rs) for rs in both
                                                                                  for _ in range(2)],
                                        tokenizer.pad_token_id, batch_size, max_length, desc, max_tokens)
        s = [v for pos, neg in zip(groups[::2], groups[1::2], strict=True) for v in (pos[0], neg[0], pos[1], neg[1])]
    else:  # one sequence per term, in the order of SCORE_KEYS
        prompts = [p for (p_pos, p_neg) in contrast for p in (p_pos, p_neg, p_pos, p_neg)]
        responses = [r for (r1, r2) in both for r in (r1, r1, r2, r2)]
        s = sequence_logprobs(
            model, prompts, responses, tokenizer.pad_token_id, batch_size, padding_side, max_length, desc, max_tokens
        )
    rows = []
    for k in range(len(items)):
        terms = dict(zip(SCORE_KEYS, s[4 * k : 4 * k + 4], strict=True))
        terms["self_reward"] = self_reward(**terms)
        rows.append(terms)
    return rows


def contrast_prompts(turns: list[str], pair: PromptPair, rendering: str, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of p+(q) and p-(q): the two prompts a contrastive score reads a response under."""
    p_pos = prompt_ids(render(turns, pair, "pos", rendering, tokenizer), tokenizer, rendering)
    p_neg = prompt_ids(render(turns, pair, "neg", rendering, tokenizer), tokenizer, rendering)
    return p_pos, p_neg


def contrast(s_pos: float, s_neg: float) -> float:
    """C(o) = S(o|p+) - S(o|p-): how much more likely the response is when the model is asked for p+."""
    return s_pos - s_neg


def self_reward(s_o1_pos: float, s_o1_neg: float, s_o2_pos: float, s_o2_neg: float) -> float:
    """R = [S(o1|p+) - S(o1|p-)] - [S(o2|p+) - S(o2|p-)] = C(o1) - C(o2)."""
    return contrast(s_o1_pos, s_o1_neg) - contrast(s_o2_pos, s_o2_neg)


def run_score(model_cfg, pairs, cfg: ScoreConfig, out, chunk: int = 32, model=None) -> list[dict]:
    """Stage 2 (`dlma score`): `scored.jsonl` in `out.out`, each pair of `pairs.pairs` with its four S terms
    and R (under the row's own pair and rendering, if it names them)."""
    from .data import pairs_file, read_pairs
    from .distributed import ShardedJSONL
    from .folder import StageFolder
    from .prompts import with_custom_pairs

    folder = StageFolder(out.out, "score", model_cfg, model)
    empty: list[str] = []
    rows_in = read_pairs(pairs.pairs, dropped=empty)
    params = {"pairs": str(pairs.pairs), **asdict(cfg),
              **with_custom_pairs(p.get("pair") or cfg.pair for p in rows_in)}
    at = folder.begin(params, {"pairs": pairs_file(pairs.pairs)}, out.force, launched=True)
    folder.note_dropped(empty, "an empty response has no token to score")
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
                                          get_pair(name), rendering, cfg.score_batch_size,
                                          max_length=cfg.score_max_length, desc=f"score {k + 1}/{len(chunks)}",
                                          share_prompts=cfg.share_prompts, max_tokens=cfg.max_batch_tokens)
                rows += [{**p, "pair": name, **t} for p, t in zip(group, terms, strict=True)]
            store.append(rows)  # grouped by setting within a chunk: the order the published run's split used
    store.finish(order=order if at.world > 1 else None)
    folder.finish(n_pairs=len(store.rows), dropped={"empty_response": empty}, processes=at.world)
    return store.rows


def summary(rows: list[dict], out) -> str:
    neg = sum(r["self_reward"] < 0 for r in rows)
    return f"{len(rows)} pairs scored, {neg} with R < 0 -> {out.out}/scored.jsonl"
