"""One vocabulary: every parameter declared once, as a field of a config dataclass, with its help in the field's
metadata (TRL's convention), where `HfArgumentParser` shows it in `--help`.

A parameter has the same name in a preset, a notebook's parameters cell, the CLI (`--gen-batch-size` or
`--gen_batch_size`) and a manifest. Parameters several stages share are declared here and inherited; a stage's
own are declared beside it. The notebooks' parameter comments must equal the help (`tests/test_params.py`), and
the book's parameter table prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing

from .artifacts import ADDED_LATER
from .data import Source
from .errors import DLMAError, did_you_mean
from .prompts import PAIRS, prompt_pairs


class Help(str):
    """A parameter's help text, with what else is declared of it: `path` (a file or folder, which `--set` reads
    from where the user stands) and `added_in` (the date it was added: a folder made before then is the same run
    at the parameter's default, `artifacts.ADDED_LATER`). It rides in the field's metadata as its "help":
    HfArgumentParser hands the metadata to argparse key by key, so further keys would break `--help`."""

    path: bool = False
    added_in: str = ""


def param(default, help: str, *, path: bool = False, added_in: str = "", kw_only=dataclasses.MISSING, **metadata):
    """A parameter, declared once: its default and help (TRL's `field(metadata={"help": ...})`), whether it names a
    file or folder, and the date it was added if it came after the first runs (`kw_only` as dataclasses' own)."""
    h = Help(help)
    h.path, h.added_in = path, added_in
    return dataclasses.field(default=default, kw_only=kw_only, metadata={"help": h, **metadata})


def required(help: str, **metadata):
    """A parameter without a default (a path the stage cannot do without), declared as `param` declares one."""
    return param(dataclasses.MISSING, help, **metadata)


# every parameter, by name, as `documented` saw it declared: its field (in the config that declares it)
PARAMETERS: dict[str, dataclasses.Field] = {}


def documented(cls):
    """Class decorator of a config: each of its fields must have help; one declared here for the first time is
    recorded in PARAMETERS, and one added later (`param(added_in=...)`) registers its default in
    `artifacts.ADDED_LATER` as its config is defined, before any stage records its parameters. A name declared
    again in another config is an error: a shared parameter is inherited from the config that declares it."""
    for f in dataclasses.fields(cls):
        if not isinstance(f.metadata.get("help"), Help):
            raise KeyError(f"{cls.__name__}.{f.name}: no help (declare it with dlma.params.param)")
        if PARAMETERS.setdefault(f.name, f) is not f:
            raise TypeError(f"{cls.__name__}.{f.name}: declared again (first in another config): inherit it instead")
        if f.metadata["help"].added_in:
            ADDED_LATER.setdefault(f.name, f.default)
    return cls


def is_path(field: dataclasses.Field) -> bool:
    """Whether a parameter names a file or folder (`--set` reads it from where the user stands)."""
    return field.metadata["help"].path


def shared(config, cls: type, **own):
    """A `cls` made from the parameters `config` shares with it (fields both inherit from one declaration), and
    `own`: how a stage that scores or samples as another stage does builds that stage's config."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names}, **own)


# ----------------------------------------------------------------------------------------------------------
# Parameters several stages share, each declared once here and inherited by the stages' configs (TRL's configs
# inherit TrainingArguments' fields the same way). They are keyword-only: a config's positional arguments stay
# its own fields, in the order it declares them, whatever it inherits. The method's own settings are the config
# dataclasses beside each stage (GenerateConfig, ScoreConfig, ...); `dlma.commands` lists which a command takes.


def check_split(split: str, name: str) -> None:
    if not split.strip():
        raise DLMAError(f"{name}: empty; name a split of the dataset (train, test, ...)")


@documented
@dataclasses.dataclass(kw_only=True)
class Seed:
    seed: int = param(0, "seeds sampling, the hold-out split, the bootstrap and training")


@documented
@dataclasses.dataclass(kw_only=True)
class Rendering:
    rendering: str = param("affix", "affix (the paper's raw-text prompts) or chat (the model's chat template)")


@documented
@dataclasses.dataclass(kw_only=True)
class PairName:
    pair: str = param("harmless", "default prompt pair when a query row names none")


@documented
@dataclasses.dataclass(kw_only=True)
class Batching:
    max_batch_tokens: int = param(0, "tokens per batch, prompts and new tokens padded (0: batches by count on a "
                                     "CPU, half the free memory on a GPU)", added_in="2026-11-27")


@documented
@dataclasses.dataclass(kw_only=True)
class Scoring(Batching):
    """How sequences are batched when their log-probabilities are read."""

    score_batch_size: int = param(
        8, "sequences per forward pass (scores agree across batch sizes to float32 rounding, up to about 3e-5, far "
           "inside the tie tolerance of 1e-3: no verdict or sign depends on it)")


@documented
@dataclasses.dataclass(kw_only=True)
class SharedPrompts:
    share_prompts: bool = param(
        True, "read each prompt once with all its responses behind it (the same scores, less work)")


@documented
@dataclasses.dataclass(kw_only=True)
class PrefLength:
    pref_max_length: int = param(
        1024, "prompt + response tokens, cut as score_max_length is (a pair left out is left out of every scorer, "
              "and counted)")


@documented
@dataclasses.dataclass(kw_only=True)
class Beta:
    beta: float = param(0.1, "DPO temperature (paper: 0.1)")


@documented
@dataclasses.dataclass(kw_only=True)
class Force:
    force: bool = param(False, "redo the stage: remove the results already in --out (even if made from other "
                               "parameters or inputs) and start over")


@documented
@dataclasses.dataclass
class Out(Force):
    out: str = required("folder for the stage's results and manifest.json (created if missing)")


@documented
@dataclasses.dataclass
class PairsFile:
    """The prompt pairs a stage can name: the built-in ones and the file's, read once (`pairs`, not an option)
    and handed to the stage, which checks its configs' pair names against them (`configs_of`)."""

    pairs_file: str = param(
        "", "a YAML or JSON file of further prompt pairs, named like the built-in ones (none if empty)", path=True)

    def __post_init__(self):
        self.pairs = prompt_pairs(self.pairs_file)


@documented
@dataclasses.dataclass
class Queries:
    queries: str = param(
        "sample:queries", "JSONL/JSON/Parquet file, sample:queries (shipped), a folder laid out as the hub lays out a "
                          "dataset, or a hub dataset id (ID/FOLDER reads a folder of it, as datasets' data_dir)",
        path=True)
    n_queries: int | None = param(None, "first N queries of the query set (all if not given)")
    queries_split: str = param("train", "the split of queries read in stage 1, for a folder or hub id (a file has "
                                        "none)", added_in="2026-11-29")
    queries_revision: str = param("", "the hub revision of queries (commit, branch or tag; empty: main); the commit "
                                      "read is recorded", added_in="2026-11-29")

    def __post_init__(self):
        check_split(self.queries_split, "queries_split")

    def source(self):
        return Source(str(self.queries), self.queries_split, self.queries_revision, "queries")


@documented
@dataclasses.dataclass
class Pairs:
    pairs: str = required("pairs.jsonl from `dlma generate` or scored.jsonl from `dlma score` (or the stage's "
                          "folder)")


@documented
@dataclasses.dataclass
class PrefSource:
    """Which human-labelled pairs: stages 3 and 3b read them (`PrefData`), stage 5 reads those they did not."""

    pref_data: str = param(
        "sample:pairs", "human-labelled pairs (rows of HH-RLHF, PKU-SafeRLHF, its processed HH or TRL): a file, "
                        "folder or hub id, as queries, or a committed row list of a public dataset "
                        "(params/data/*.rows.json, its rows fetched from the source or read from DLMA_DATA_DIR)",
        path=True)
    label_field: str = param("safer_response_id",
                             "PKU-SafeRLHF label column: safer_response_id or better_response_id", kw_only=True)
    pref_split: str = param("test", "the split of pref_data read by stages 3, 3b and 5 (a file has none)",
                            added_in="2026-11-29", kw_only=True)
    pref_revision: str = param("", "the hub revision of pref_data (commit, branch or tag; empty: main)",
                               added_in="2026-11-29", kw_only=True)

    def __post_init__(self):
        check_split(self.pref_split, "pref_split")

    def source(self):
        return Source(str(self.pref_data), self.pref_split, self.pref_revision, "pref")


@documented
@dataclasses.dataclass
class PrefData(PrefSource):
    pref_limit: int | None = param(None, "the first N valid pairs (all if not given)")
    on_invalid: str = param("skip", "skip or error: rows with an empty response or mismatched contexts (real "
                                    "HH-RLHF has a few)", added_in="2026-11-29")


@documented
@dataclasses.dataclass
class Split(Seed):
    holdout_fraction: float = param(0.05, "share of generated pairs held out for stage 5 (neither the paper nor the "
                                          "released code states one)")


@documented
@dataclasses.dataclass
class Run(Force):
    # `--run` is accepted too (not under torchrun, whose --run-path it abbreviates)
    run_dir: str = required("the run folder; `dlma run` sets it", aliases=["--run"])


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
        argv: list[str] = []

        def error(self, message: str):
            options = [s for a in self._actions for s in a.option_strings]
            named = [a.split("=")[0] for a in self.argv if a.startswith("--") and a != "--"]  # "--": options end
            stray = [a for a in named if a not in options]
            if message.startswith("unrecognized arguments:"):  # argparse's "did you mean" came in Python 3.12
                message += did_you_mean(message.split(":", 1)[1].split()[0].split("=")[0], options, quote="")
            elif stray:  # argparse names a missing required option first: a misspelt one may be why, so it leads
                message = (f"unrecognized arguments: {' '.join(stray)}{did_you_mean(stray[0], options, quote='')}; "
                           f"and {message}")
            self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

        def parse(self, argv: list[str]) -> list:
            """The dataclasses from a command line; an unknown or misspelt option is one line, exit status 2."""
            self.argv = list(argv)  # (abbreviations are off: an option is known by its whole name)
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
    """The dataclasses of `types` from the values their options read ({name: value}); a config that names prompt
    pairs checks them (`check_pairs`) against the pairs file's, or the built-in ones."""
    configs = [t(**{f.name: read[f.name] for f in dataclasses.fields(t) if f.init}) for t in types]
    pairs = pairs_of(configs)
    for config in configs:
        if hasattr(config, "check_pairs"):
            config.check_pairs(pairs)
    return configs


def pairs_of(configs: list):
    """The prompt pairs a command's configs know: its pairs file's (with the built-in ones), or the built-in."""
    return next((c.pairs for c in configs if isinstance(c, PairsFile)), PAIRS)


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
