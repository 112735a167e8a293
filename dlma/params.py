"""One vocabulary: every parameter's name and meaning, written once.

A parameter has the same name in a preset, a notebook's parameters cell, the CLI (`--gen-batch-size` or
`--gen_batch_size`) and a manifest. Its help text lives here; `documented` copies it into the config
dataclasses' field metadata (TRL's convention), where `HfArgumentParser` shows it in `--help`. The notebooks'
parameter comments must equal it (`tests/test_params.py`), and the book's parameter table prints it.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

HELP = {
    # the run and the model
    "run_dir": "the run folder; `dlma run` sets it",
    "model": "alias, local folder or hub id",
    "dtype": "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16",
    "device": "auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps",
    "load_in_4bit": "QLoRA: NF4 base through bitsandbytes (CPU or CUDA)",
    "trust_remote_code": "run a model folder's own code (off unless you trust it)",
    "adapter": "a trained LoRA adapter folder to apply on top (the `implicit` scorer needs one)",
    "seed": "seeds sampling, the hold-out split, the bootstrap and training",
    "rendering": "affix (the paper's raw-text prompts) or chat (the model's chat template)",
    # inputs and outputs of the CLI's commands
    "out": "folder for the stage's results and manifest.json (created if missing)",
    "force": "redo the stage: remove the results already in --out (even if made from other parameters or "
             "inputs) and start over",
    "pairs": "pairs.jsonl from `dlma generate` or scored.jsonl from `dlma score` (or the stage's folder)",
    # 1 generate
    "queries": "JSONL/JSON/Parquet, sample:queries (shipped), or a hub dataset id",
    "n_queries": "first N queries of the query set (all if not given)",
    "pair": "default prompt pair when a query row names none",
    "pairs_file": "a YAML or JSON file of further prompt pairs, named like the built-in ones (none if empty)",
    "temperature": "sampling temperature (paper: 1.0)",
    "top_k": "top-k sampling (paper: 50)",
    "top_p": "nucleus sampling (paper: 1.0, off)",
    "max_new_tokens": "response length cap (paper: 200)",
    "max_batch_tokens": "tokens per batch, prompts and new tokens padded (0: batches by count on a CPU, half "
                        "the free memory on a GPU)",
    "static_cache": "generate with a static KV cache, whose decode step transformers compiles on a GPU",
    "max_query_words": "longer queries are left out and counted, as in the released code",
    "gen_batch_size": "queries per generation batch (2 sequences each)",
    # 2 self-reward
    "score_batch_size": "sequences per forward pass (results do not depend on it)",
    "share_prompts": "read each prompt once with all its responses behind it (the same scores, less work)",
    "score_max_length": "prompt + response tokens when scoring pairs, longer prompts cut from the left",
    # 3 preference accuracy
    "pref_data": "human-labelled pairs: HH-RLHF, PKU-SafeRLHF or TRL format",
    "pref_limit": "the first N valid pairs (all if not given)",
    "pref_max_length": "tokens, longer contexts are cut from the left",
    "pref_pair": "prompt pair of the dlma scorer",
    "scorers": "comma-separated: dlma, rlaif, loglik, length, random (implicit needs an adapter)",
    "rlaif_instruction": "RLAIF's principle, asked after the two options",
    "n_bootstrap": "bootstrap resamples of each 95% interval",
    "on_invalid": "skip or error: rows with an empty response or mismatched contexts (real HH-RLHF has a few)",
    "label_field": "PKU-SafeRLHF label column: safer_response_id or better_response_id",
    # 3b prompt-pair study
    "study_variants": "comma-separated prompt pairs to compare (pair@chat for the chat rendering), the paper's "
                      "pair first; each also length-normalised, and their mean R as an ensemble",
    "study_select": "labelled pairs drawn (by the seed) to select the best variant on; the rest confirm it",
    # 4 train
    "holdout_fraction": "share of generated pairs held out for stage 5 (paper: 0.05)",
    "beta": "DPO temperature (paper: 0.1)",
    "gamma": "0 gives plain DPO on the prompt-labelled pairs (the RLCD-style baseline)",
    "margin_low": "clamp of R, lower bound L (paper: -40)",
    "margin_high": "clamp of R, upper bound U (paper: 40)",
    "weighting": "DLMA's variant: the DPO loss times clamp(R) (R below 0 weighs 0) instead of a margin; needs gamma 0",
    "learning_rate": "LoRA learning rate (the paper full-fine-tuned at 5e-7)",
    "optim": "a transformers optimizer name (AdamW: LoRA recipes are tuned for it; the paper used RMSprop)",
    "lr_scheduler_type": "a transformers scheduler (the released DPO code: linear warm-up, then constant)",
    "warmup_steps": "below 1: a fraction of the steps, from 1: a count (the paper: 150)",
    "epochs": "passes over the training pairs (paper: 1)",
    "train_batch_size": "pairs per step (paper: 64)",
    "grad_accum": "steps whose gradients are summed before an update (the global batch is train_batch_size times this)",
    "train_max_length": "prompt + response tokens (paper: 512)",
    "max_prompt_length": "prompt tokens in training; longer prompts keep their end (the question and the cue)",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA scaling alpha",
    "lora_dropout": "dropout on the LoRA path (the base runs without dropout)",
    "gradient_checkpointing": "recompute activations in the backward pass (TRL's default; what fits 7B)",
    "logging_steps": "log the loss and reward metrics every N steps",
    "report_to": "none, or tensorboard (offline event files in the adapter's runs/ folder)",
    # 5 evaluate
    "eval_n_prompts": "held-out queries answered by base and DLMA",
    "eval_n_pairs": "held-out human pairs for implicit-reward accuracy",
    "eval_max_new_tokens": "response length cap in stage 5",
    "eval_batch_size": "queries per generation batch in stage 5 (each batch seeded by its position)",
    # 6 baselines
    "baseline_methods": "comma-separated methods trained on stage 4's pairs and budget, then judged against base and "
                        "DLMA: rlcd, dlma_weighting, rlaif_dpo, context_distillation, rlhf, and the ablations "
                        "dlma_gamma0.1, dlma_gamma0.5, dlma_clamp20, dlma_study",
    "judge_url": "an OpenAI-compatible endpoint (its base URL, before /chat/completions) judging beside the local "
                 "judges (none if empty)",
    "judge_model": "the model name sent to judge_url",
    "judge_key_env": "the environment variable holding judge_url's API key (read at each request, never written)",
}


def documented(cls):
    """Class decorator: each field's metadata gets its help from HELP (a field without one is an error)."""
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            if f.name not in HELP:
                raise KeyError(f"{cls.__name__}.{f.name}: no help text in dlma.params.HELP")
            f.metadata = MappingProxyType({**f.metadata, "help": HELP[f.name]})
    return cls
