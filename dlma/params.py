"""One vocabulary: every parameter's name and meaning, written once.

A parameter has the same name in a preset, a notebook's parameters cell, the CLI (`--gen-batch-size` or
`--gen_batch_size`) and a manifest. Its help text lives here; `documented` copies it into the config
dataclasses' field metadata (TRL's convention), where `HfArgumentParser` shows it in `--help`. The notebooks'
parameter comments must equal it (`tests/test_params.py`), and the book's parameter table prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from types import MappingProxyType

from .artifacts import ADDED_LATER
from .data import Source
from .errors import DLMAError, did_you_mean
from .prompts import load_pairs_file


class Help(str):
    """A parameter's help text, with what else is declared of it once: `path` (a file or folder, which `--set`
    reads from where the user stands) and `added_in` (the date it was added: a folder made before then is the
    same run at the parameter's default, `artifacts.ADDED_LATER`)."""

    path: bool = False
    added_in: str = ""


def path(text: str) -> Help:
    h = Help(text)
    h.path = True
    return h


def added(date: str, text: str | Help) -> Help:
    h = Help(text)
    h.path, h.added_in = getattr(text, "path", False), date
    return h


HELP = {
    # the run and the model
    "run_dir": "the run folder; `dlma run` sets it",
    "model": path("alias, local folder or hub id"),
    "dtype": "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16",
    "device": "auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps",
    "load_in_4bit": "load the model's weights in 4-bit NF4 through bitsandbytes (CPU or CUDA)",
    "trust_remote_code": "run a model folder's own code (off unless you trust it)",
    "adapter": path("a trained LoRA adapter folder to apply on top (the `implicit` scorer needs one)"),
    "seed": "seeds sampling, the hold-out split, the bootstrap and training",
    "rendering": "affix (the paper's raw-text prompts) or chat (the model's chat template)",
    # inputs and outputs of the CLI's commands
    "out": "folder for the stage's results and manifest.json (created if missing)",
    "force": "redo the stage: remove the results already in --out (even if made from other parameters or "
             "inputs) and start over",
    "pairs": "pairs.jsonl from `dlma generate` or scored.jsonl from `dlma score` (or the stage's folder)",
    # 1 generate
    "queries": path(
        "JSONL/JSON/Parquet file, sample:queries (shipped), a folder laid out as the hub lays out a dataset, or "
        "a hub dataset id (ID/FOLDER reads a folder of it, as datasets' data_dir)"),
    "queries_split": added("2026-11-29",
        "the split of queries read in stage 1, for a folder or hub id (a file has none)"),
    "queries_revision": added("2026-11-29",
        "the hub revision of queries (commit, branch or tag; empty: main); the commit read is recorded"),
    "n_queries": "first N queries of the query set (all if not given)",
    "pair": "default prompt pair when a query row names none",
    "pairs_file": path("a YAML or JSON file of further prompt pairs, named like the built-in ones (none if empty)"),
    "temperature": "sampling temperature (the paper: 1.0; the released code sets none: the checkpoint's)",
    "top_k": "top-k sampling (the paper names none; the released code: transformers' default, 50)",
    "top_p": "nucleus sampling, 1.0 is off (the paper names none; the released code: the checkpoint's)",
    "max_new_tokens": "response length cap (the paper and the released code: 200)",
    "max_batch_tokens": added("2026-11-27",
        "tokens per batch, prompts and new tokens padded (0: batches by count on a CPU, half "
        "the free memory on a GPU)"),
    "static_cache": added("2026-11-27",
        "generate with a static KV cache, whose decode step transformers compiles on a GPU"),
    "max_query_words": "longer queries are left out and counted, as in the released code",
    "gen_batch_size": "queries per generation batch (2 sequences each)",
    # 2 self-reward
    "score_batch_size": "sequences per forward pass (scores agree across batch sizes to float32 rounding, up to "
                        "about 3e-5, far inside the tie tolerance of 1e-3: no verdict or sign depends on it)",
    "share_prompts": "read each prompt once with all its responses behind it (the same scores, less work)",
    "score_max_length": "prompt + response tokens when scoring pairs: a longer prompt is cut from the left, or in its "
                        "middle where that would cut what tells p+ from p- (a chat system message); a pair whose "
                        "response leaves no room for that is left out and counted",
    # 3 preference accuracy
    "pref_data": path(
        "human-labelled pairs (rows of HH-RLHF, PKU-SafeRLHF, its processed HH or TRL): a file, folder or "
        "hub id, as queries, or a committed row list of a public dataset (params/data/*.rows.json, its "
        "rows fetched from the source or read from DLMA_DATA_DIR)"),
    "pref_split": added("2026-11-29", "the split of pref_data read by stages 3, 3b and 5 (a file has none)"),
    "pref_revision": added("2026-11-29", "the hub revision of pref_data (commit, branch or tag; empty: main)"),
    "pref_limit": "the first N valid pairs (all if not given)",
    "pref_max_length": "prompt + response tokens, cut as score_max_length is (a pair left out is left out of every "
                       "scorer, and counted)",
    "pref_pair": "prompt pair of the dlma scorer",
    "scorers": "comma-separated: dlma, rlaif, loglik, length, random (implicit needs an adapter)",
    "rlaif_instruction": "RLAIF's principle, asked after the two options",
    "n_bootstrap": "bootstrap resamples of each 95% interval",
    "on_invalid": added("2026-11-29",
        "skip or error: rows with an empty response or mismatched contexts (real HH-RLHF has a few)"),
    "label_field": "PKU-SafeRLHF label column: safer_response_id or better_response_id",
    # 3b prompt-pair study
    "study_variants": "comma-separated prompt pairs to compare (pair@chat for the chat rendering), the paper's "
                      "pair first; each also length-normalised, and their mean R as an ensemble",
    "study_select": "labelled pairs drawn (by the seed) to select the best variant on; the rest confirm it",
    # 4 train
    "holdout_fraction": "share of generated pairs held out for stage 5 (neither the paper nor the released code "
                        "states one)",
    "beta": "DPO temperature (paper: 0.1)",
    "gamma": "0 gives plain DPO on the prompt-labelled pairs (the RLCD-style baseline)",
    "margin_low": "clamp of R, lower bound L (paper: -40)",
    "margin_high": "clamp of R, upper bound U (paper: 40)",
    "weighting": "DLMA's variant: the DPO loss times clamp(R) (R below 0 weighs 0) instead of a margin; needs gamma 0",
    "learning_rate": "LoRA learning rate (the released code full-fine-tunes at 5e-7; the paper names none)",
    "optim": "a transformers optimizer name (AdamW: LoRA recipes are tuned for it; the released code uses RMSprop)",
    "lr_scheduler_type": "a transformers scheduler (the released DPO code: linear warm-up, then constant)",
    "warmup_steps": "below 1: a fraction of the steps, from 1: a count (the released code: 150)",
    "num_train_epochs": "passes over the training pairs (the released code: 1)",
    "per_device_train_batch_size": "pairs per step on each process (the released code: a global batch of 64)",
    "gradient_accumulation_steps": "steps whose gradients are summed before an update (the global batch: processes x "
                                   "per_device_train_batch_size x this)",
    "max_length": "prompt + response tokens in training (the released code: 512)",
    "max_prompt_length": "prompt tokens in training; longer prompts keep their end (the question and the cue)",
    "qlora": "train LoRA adapters on a 4-bit NF4 base (QLoRA, through bitsandbytes); false: on the base in its "
             "own dtype",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA scaling alpha",
    "lora_dropout": "dropout on the LoRA path (the base runs without dropout)",
    "gradient_checkpointing": "recompute activations in the backward pass (TRL's default; what fits 7B)",
    "logging_steps": "log the loss and reward metrics every N steps",
    "report_to": "none, or tensorboard (offline event files in the adapter's runs/ folder)",
    "save_steps": added("2026-12-02",
        "save a checkpoint every N steps in the adapter folder's checkpoints/ (removed once the adapter "
        "is written): a training killed or stopped resumes from it, to the same adapter; 0: none"),
    # 5 evaluate
    "eval_n_prompts": "held-out queries answered by base and DLMA",
    "eval_queries_split": added("2026-11-29",
        "the split of stage 1's query set (at its revision) stage 5 answers; from a file, or the "
        "split stage 1 read, the queries stage 1 did not use"),
    "eval_n_pairs": "held-out human pairs for implicit-reward accuracy",
    "eval_max_new_tokens": "response length cap in stage 5",
    "eval_batch_size": "queries per generation batch in stage 5 (each batch seeded by its position)",
    # 6 baselines
    "baseline_methods": "comma-separated methods trained on stage 4's pairs and budget, then judged against base and "
                        "DLMA: rlcd, dlma_weighting, rlaif_dpo, context_distillation, rlhf, and the ablations "
                        "dlma_gamma0.1, dlma_gamma0.5, dlma_clamp20, dlma_study",
    "rlhf_data": added("2026-11-29", path(
        "the human pairs the rlhf baseline trains on (empty: pref_data at pref_revision)")),
    "rlhf_split": added("2026-11-29",
        "the split of the rlhf baseline's pairs (the paper's RLHF learns from the train split); from the "
        "source stage 5 evaluates on, its evaluated pairs are left out"),
    "rlhf_revision": added("2026-11-29",
        "the hub revision of rlhf_data (empty: main; with rlhf_data empty, pref_revision)"),
    "judge_url": added("2026-11-28",
        "an OpenAI-compatible endpoint (its base URL, before /chat/completions) judging beside the local "
        "judges (none if empty)"),
    "judge_model": added("2026-11-28", "the model name sent to judge_url"),
    "judge_key_env": added("2026-11-28",
        "the environment variable holding judge_url's API key (read at each request, never written)"),
}


def documented(cls):
    """Class decorator: each field's metadata gets its help from HELP (a field without one is an error); a field
    added later (`added`) registers its default in `artifacts.ADDED_LATER`, which every config class does when it
    is defined, before any stage records its parameters. (`path` and `added_in` stay on the help text: the
    metadata is handed to argparse by HfArgumentParser, key by key.)"""
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            if f.name not in HELP:
                raise KeyError(f"{cls.__name__}.{f.name}: no help text in dlma.params.HELP")
            f.metadata = MappingProxyType({**f.metadata, "help": str(HELP[f.name])})
        if getattr(HELP.get(f.name), "added_in", ""):
            if ADDED_LATER.setdefault(f.name, f.default) != f.default:  # one default, or old folders would differ
                raise ValueError(f"{cls.__name__}.{f.name}: default {f.default!r}, another config's "
                                 f"{ADDED_LATER[f.name]!r}: a parameter added later has one default")
    return cls


# the parameters that name a file or folder: `--set` reads them from where the user stands
PATH_PARAMETERS = frozenset(name for name, h in HELP.items() if getattr(h, "path", False))


# ----------------------------------------------------------------------------------------------------------
# The arguments every stage shares: where it reads and writes. The method's own settings are the config
# dataclasses beside each stage (GenerateConfig, ScoreConfig, ...); `dlma.commands` lists which a command takes.


def check_split(split: str, name: str) -> None:
    if not split.strip():
        raise DLMAError(f"{name}: empty; name a split of the dataset (train, test, ...)")


@documented
@dataclasses.dataclass
class Out:
    out: str
    force: bool = False


@documented
@dataclasses.dataclass
class PairsFile:
    """Parsed first, so the pairs it defines are known when the stage's config checks its pair names."""

    pairs_file: str = ""

    def __post_init__(self):
        load_pairs_file(self.pairs_file)


@documented
@dataclasses.dataclass
class Queries:
    queries: str = "sample:queries"
    n_queries: int | None = None
    queries_split: str = "train"
    queries_revision: str = ""

    def __post_init__(self):
        check_split(self.queries_split, "queries_split")

    def source(self):
        return Source(str(self.queries), self.queries_split, self.queries_revision, "queries")


@documented
@dataclasses.dataclass
class Pairs:
    pairs: str


@documented
@dataclasses.dataclass
class PrefData:
    pref_data: str = "sample:pairs"
    pref_limit: int | None = None
    on_invalid: str = "skip"
    label_field: str = "safer_response_id"
    pref_split: str = "test"
    pref_revision: str = ""

    def __post_init__(self):
        check_split(self.pref_split, "pref_split")

    def source(self):
        return Source(str(self.pref_data), self.pref_split, self.pref_revision, "pref")


@documented
@dataclasses.dataclass
class Split:
    holdout_fraction: float = 0.05
    seed: int = 0


@documented
@dataclasses.dataclass
class Run:
    # `--run` is accepted too (not under torchrun, whose --run-path it abbreviates)
    run_dir: str = dataclasses.field(metadata={"aliases": ["--run"]})
    force: bool = False


# Arguments that say where a stage reads and writes: in a run folder, `dlma run` and the notebooks set them.
PATHS = ("out", "pairs", "run_dir", "force")


# ----------------------------------------------------------------------------------------------------------
# One parser: the CLI's. A preset's values, `--set` items and a notebook's parameters are written as the command
# line that gives them (`arguments`) and read by the command's own parser, once: a value means the same wherever
# it is given, and `dlma run` hands a launched stage the very same arguments.


def integer(text: str) -> int:
    """An int option's type (argparse's own message would name the function: "invalid int value")."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def finite_float(text: str) -> float:
    """A float option's type: a finite number (inf and nan break the loss, the schedule and params.json)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def boolean(text) -> bool:
    """A bool option's type (HfArgumentParser's words, with a message of ours)."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def argument_parser(types: list[type], prog: str | None = None, description: str | None = None,
                    exit_on_error: bool = True):
    """`HfArgumentParser` over `types`, reporting a wrong or misspelt option as one line with exit status 2
    (or raising argparse.ArgumentError, with `exit_on_error=False`)."""
    from transformers import HfArgumentParser  # deferred: transformers loads slowly (seconds)
    from transformers.hf_argparser import string_to_bool  # deferred: as above

    class OneLineParser(HfArgumentParser):
        def error(self, message: str):
            hint = ""
            if message.startswith("unrecognized arguments:"):  # argparse's "did you mean" came in Python 3.12
                options = [s for a in self._actions for s in a.option_strings]
                hint = did_you_mean(message.split(":", 1)[1].split()[0].split("=")[0], options, quote="")
            self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")

        def parse(self, argv: list[str]) -> list:
            """The dataclasses from a command line; an unknown or misspelt option is one line, exit status 2."""
            return configs_of(self.dataclass_types, vars(self.parse_args(argv)))

    class Help(argparse.ArgumentDefaultsHelpFormatter):
        """Shows an option's default, but not "(default: None)": for a required option it misleads, and for
        the others the help says what leaving it out means."""

        def _get_help_string(self, action):
            if action.required or action.default is None or action.default == []:
                return action.help
            return super()._get_help_string(action)

    parser = OneLineParser(types, prog=prog, description=description, allow_abbrev=False, formatter_class=Help,
                           exit_on_error=exit_on_error)
    # the option types, as the parser looks them up: messages that say what was expected; inf and nan are no
    # setting, refused where given, before anything is written
    for kind, read in ((int, integer), (float, finite_float), (string_to_bool, boolean)):
        parser.register("type", kind, read)
    for action in parser._actions:  # argparse reads help as a %-format string: a literal % must be doubled
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = action.help.replace("%", "%%")
    return parser


def option_text(value) -> str:
    """A value as it is typed on a command line (booleans as true / false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def arguments(values: dict) -> list[str]:
    """The command line that gives `values` ({name: value}): `--gen-batch-size=16`; a None is left out (the
    option's default None, "all if not given")."""
    return [f"--{name.replace('_', '-')}={option_text(value)}" for name, value in values.items() if value is not None]


def configs_of(types: list[type], read: dict) -> list:
    """The dataclasses of `types` from the values their options read ({name: value})."""
    return [t(**{f.name: read[f.name] for f in dataclasses.fields(t) if f.init}) for t in types]


def parse(types: list[type], values: dict, where=lambda key: f"parameter '{key}'") -> list:
    """The dataclasses of `types` built from `values` ({name: value}, from a preset, `--set` or a notebook) as
    `dlma COMMAND` builds them from its command line. `where(key)` says where a value came from, for the one-line
    error a wrong one gets. Names not in `values` take their default."""
    return configs_of(types, read_values(types, values, where))


def read_values(types: list[type], values: dict, where=lambda key: f"parameter '{key}'") -> dict:
    """{name: value} of every option of `types`, `values` read as the command line `arguments(values)` by the
    command's parser (see `parse`); a value no command line could give (a list, a None for a setting) is refused
    before it."""
    fields = fields_of(types)
    hints = {k: v for t in types for k, v in typing.get_type_hints(t).items()}
    for key, value in values.items():
        if key not in fields:
            raise DLMAError(f"{where(key)}: unknown parameter '{key}'{did_you_mean(key, fields)}")
        if isinstance(value, (list, dict)) or (value is None and fields[key].default is not None):
            kind = {int: "an integer", float: "a finite number", bool: "true or false"}
            expected = next((kind[t] for t in (hints[key], *typing.get_args(hints[key])) if t in kind), "text")
            raise DLMAError(f"{where(key)}: expected {expected}, got {value!r}")
    missing = [k for k, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and values.get(k) is None]
    if missing:
        raise DLMAError(f"{where(missing[0])}: required, not given")
    try:
        return vars(argument_parser(types, exit_on_error=False).parse_args(arguments(values)))
    except argparse.ArgumentError as err:
        key = (err.argument_name or "").split("/")[0].lstrip("-").replace("-", "_")
        raise DLMAError(f"{where(key)}: {err.message}") from None


def fields_of(types: list[type]) -> dict[str, dataclasses.Field]:
    """{name: field} of every option of `types`, in order."""
    return {f.name: f for t in types for f in dataclasses.fields(t) if f.init}
