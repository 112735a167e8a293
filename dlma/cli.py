"""`dlma` command line: one subcommand per stage, each writing into `--out`.

Stage parameters come straight from the stage's config dataclass (`--max-new-tokens` is
GenerateConfig.max_new_tokens), so the CLI, the notebooks and the presets share one set of names.
Errors the user can fix are printed as one line, with exit status 2, and nothing written is lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from .errors import DLMAError
from .models import DEFAULT_MODEL, ModelConfig


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, type=type(default[0]), nargs=len(default), default=default)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default) if default is not None else str,
                                default=default)


def from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: (tuple(v) if isinstance(v := getattr(args, f.name), list) else v)
                  for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"alias, local folder or hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=False)


def model_config(args: argparse.Namespace, adapter: str | None = None) -> ModelConfig:
    return ModelConfig(args.model, args.dtype, args.device, args.load_in_4bit, args.trust_remote_code, adapter)


class Parser(argparse.ArgumentParser):
    """argparse, with a wrong option reported as one line (argparse prints the usage block too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_out_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--out", required=True, help=f"folder for {what} and manifest.json (created if missing)")
    parser.add_argument("--force", action="store_true",
                        help="redo the stage: remove the results already in --out (even if made from other "
                             "parameters or inputs) and start over")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands; `train`'s options (which import TRL and PEFT, seconds) only when `command` is
    train or unknown, so the other stages start, and fail on bad input, without that import."""
    from .alignment import EvalConfig
    from .generate import GenerateConfig
    from .preference import PrefAccConfig
    from .score import ScoreConfig

    p = Parser(prog="dlma", description="Direct Large Model Alignment, offline.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    g = sub.add_parser("generate", help="contrastive response pairs (o1 under p+, o2 under p-)")
    add_model_args(g)
    g.add_argument("--queries", default="sample:queries", help="JSONL/JSON/Parquet, sample:queries, or hub id")
    g.add_argument("--limit", type=int, default=None, help="first N queries (>= 1; default all)")
    add_out_args(g, "pairs.jsonl")
    add_dataclass_args(g, GenerateConfig)

    s = sub.add_parser("score", help="self-rewarding score R of generated pairs")
    add_model_args(s)
    s.add_argument("--pairs", required=True, help="pairs.jsonl from `dlma generate` (or its folder)")
    add_out_args(s, "scored.jsonl")
    add_dataclass_args(s, ScoreConfig)

    a = sub.add_parser("pref-acc", help="preference accuracy on human-labelled pairs")
    add_model_args(a)
    a.add_argument("--data", default="sample:pairs", help="human-labelled pairs (HH-RLHF, PKU-SafeRLHF, TRL)")
    a.add_argument("--limit", type=int, default=None, help="first N valid pairs (>= 1; default all)")
    a.add_argument("--adapter", default=None, help="trained adapter folder (for the `implicit` scorer)")
    a.add_argument("--on-invalid", choices=("skip", "error"), default="skip",
                   help="rows with an empty response or mismatched contexts (real HH-RLHF has a few)")
    a.add_argument("--label-field", default="safer_response_id", help="PKU-SafeRLHF label column")
    add_out_args(a, "metrics.json, predictions.jsonl")
    add_dataclass_args(a, PrefAccConfig)

    t = sub.add_parser("train", help="QLoRA DLMA training on scored pairs")
    t.add_argument("--model", default=DEFAULT_MODEL)
    t.add_argument("--device", default="auto")
    t.add_argument("--dtype", default="auto")
    t.add_argument("--pairs", required=True, help="scored.jsonl from `dlma score` (or its folder)")
    add_out_args(t, "the adapter")
    if command in (None, "train"):
        from .train import TrainConfig

        add_dataclass_args(t, TrainConfig)

    sp = sub.add_parser("split", help="hold out a share of scored pairs for evaluation (train.jsonl, heldout.jsonl)")
    sp.add_argument("--pairs", required=True, help="scored.jsonl from `dlma score` (or its folder)")
    sp.add_argument("--holdout-fraction", type=float, default=0.05, help="share of pairs held out (paper: 0.05)")
    sp.add_argument("--seed", type=int, default=0, help="seeds the shuffle")
    add_out_args(sp, "train.jsonl and heldout.jsonl")

    e = sub.add_parser("evaluate", help="stage 5 in a run folder: the trained adapter against its base")
    add_model_args(e)
    e.add_argument("--run", required=True, help="a run folder holding stages 01 to 04 (e.g. runs/default)")
    e.add_argument("--force", action="store_true", help="redo the stage, removing its earlier results")
    add_dataclass_args(e, EvalConfig)

    r = sub.add_parser("run", help="the whole pipeline: notebooks executed with papermill, then the book")
    r.add_argument("--preset", default="default", help="params/<preset>.yaml (smoke, default, paper)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset parameter (repeatable); unknown keys are refused")
    r.add_argument("--run-id", default=None, help="run folder name under runs/ (default: the preset's name)")
    r.add_argument("--no-publish", action="store_true", help="do not copy executed notebooks into book/results")
    return p


def run_command(args: argparse.Namespace) -> None:
    from . import stages

    if args.command == "generate":
        from .generate import GenerateConfig

        cfg = from_args(GenerateConfig, args)
        rows = stages.run_generate(args.out, model_config(args), args.queries, cfg, args.limit, force=args.force)
        print(f"{len(rows)} pairs -> {os.path.join(args.out, 'pairs.jsonl')}")
    elif args.command == "score":
        from .score import ScoreConfig

        rows = stages.run_score(args.out, model_config(args), args.pairs, from_args(ScoreConfig, args),
                                force=args.force)
        neg = sum(r["self_reward"] < 0 for r in rows)
        print(f"{len(rows)} pairs scored, {neg} with R < 0 -> {os.path.join(args.out, 'scored.jsonl')}")
    elif args.command == "pref-acc":
        from .preference import PrefAccConfig, metrics_table

        cfg = from_args(PrefAccConfig, args)
        metrics = stages.run_pref_acc(args.out, model_config(args, args.adapter), args.data, cfg, args.limit,
                                      args.on_invalid, args.label_field, force=args.force)
        print(metrics_table(metrics))
    elif args.command == "train":
        from .train import TrainConfig

        cfg = from_args(TrainConfig, args)
        summary = stages.run_train(args.out, ModelConfig(args.model, args.dtype, args.device), args.pairs, cfg,
                                   force=args.force)
        print(f"adapter -> {args.out}  ({summary})")
    elif args.command == "split":
        train, heldout = stages.run_split(args.out, args.pairs, args.holdout_fraction, args.seed, force=args.force)
        print(f"{len(train)} training pairs, {len(heldout)} held out -> {args.out}")
    elif args.command == "evaluate":
        from .alignment import EvalConfig
        from .report import alignment_frame

        summary = stages.run_evaluate(args.run, model_config(args), from_args(EvalConfig, args), force=args.force)
        print(alignment_frame(summary).to_string())
    elif args.command == "run":
        from .pipeline import run_pipeline

        run_pipeline(args.preset, args.overrides, args.run_id, publish=not args.no_publish)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(command).parse_args(argv)
    try:
        run_command(args)
    except DLMAError as e:
        print(f"dlma {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused: a folder not writable, a disk full, a path through a file
        where = f"{e.filename}: " if e.filename else ""
        print(f"dlma {args.command}: error: {where}cannot be written or read ({e.strerror or e})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dlma {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
