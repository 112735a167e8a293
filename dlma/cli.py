"""`dlma` command line: one command per stage, each writing into a folder.

A command's options are the fields of the dataclasses it is built from (`--gen-batch-size` is
GenerateConfig.gen_batch_size), parsed by transformers' `HfArgumentParser` with the help text of
`dlma.params`, so the CLI, the notebooks, the presets and the manifests share one set of names.
Errors the user can fix are printed as one line, with exit status 2, and nothing written is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from dataclasses import dataclass, field

from .errors import DLMAError
from .models import DEFAULT_MODEL, ModelConfig
from .params import documented
from .prompts import load_pairs_file


@documented
@dataclass
class Out:
    out: str
    force: bool = False


@documented
@dataclass
class PairsFile:
    """Parsed first, so the pairs it defines are known when the stage's config checks its pair names."""

    pairs_file: str = ""

    def __post_init__(self):
        load_pairs_file(self.pairs_file)


@documented
@dataclass
class Queries:
    queries: str = "sample:queries"
    n_queries: int | None = None


@documented
@dataclass
class Pairs:
    pairs: str


@documented
@dataclass
class PrefData:
    pref_data: str = "sample:pairs"
    pref_limit: int | None = None
    on_invalid: str = "skip"
    label_field: str = "safer_response_id"


@documented
@dataclass
class Split:
    pairs: str
    holdout_fraction: float = 0.05
    seed: int = 0


@documented
@dataclass
class Run:
    # the notebooks' name; `--run`, its older spelling, still works (not under torchrun, whose --run-path
    # it abbreviates)
    run_dir: str = field(metadata={"aliases": ["--run"]})
    force: bool = False


@documented
@dataclass
class BaseModel:
    """The model `dlma train` quantises (see load_in_4bit) and trains adapters on."""

    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    device: str = "auto"


def commands() -> dict[str, tuple[str, list]]:
    """{command: (what it does, the dataclasses its options come from)}. `train`'s import TRL (seconds)."""
    from .alignment import EvalConfig
    from .baselines import BaselineConfig
    from .generate import GenerateConfig
    from .preference import PrefAccConfig
    from .score import ScoreConfig
    from .study import StudyConfig

    def train_config():
        from .train import TrainConfig

        return TrainConfig

    return {
        "generate": ("contrastive response pairs (o1 under p+, o2 under p-)", [PairsFile, ModelConfig, Queries,
                                                                              GenerateConfig, Out]),
        "score": ("self-rewarding score R of generated pairs", [PairsFile, ModelConfig, Pairs, ScoreConfig, Out]),
        "pref-acc": ("preference accuracy on human-labelled pairs", [PairsFile, ModelConfig, PrefData, PrefAccConfig,
                                                                     Out]),
        "pair-study": ("stage 3b in a run folder: prompt pairs selected on a slice, confirmed on the rest",
                       [PairsFile, ModelConfig, PrefData, PrefAccConfig, StudyConfig, Run]),
        "split": ("hold out a share of scored pairs (train.jsonl, heldout.jsonl)", [Split, Out]),
        "train": ("QLoRA DLMA training on scored pairs", [BaseModel, Pairs, train_config, Out]),
        "evaluate": ("stage 5 in a run folder: the trained adapter against its base", [ModelConfig, EvalConfig, Run]),
        "baselines": ("stage 6 in a run folder: every baseline on stage 4's pairs and budget, judged on stage 5's "
                      "prompts", [ModelConfig, BaselineConfig, Run]),
        "baselines-train": ("stage 6's training alone (every process of a launch shares each method's training)",
                            [ModelConfig, BaselineConfig, Run]),
    }


class Parser(argparse.ArgumentParser):
    """argparse, with a wrong option reported as one line (argparse prints the usage block too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command_types(command: str) -> list[type]:
    """The dataclasses a command's options come from (train's config imported now)."""
    return [t() if not isinstance(t, type) else t for t in commands()[command][1]]


def stage_parser(command: str):
    from transformers import HfArgumentParser

    class OneLineHfParser(HfArgumentParser, Parser):
        pass

    return OneLineHfParser(command_types(command), prog=f"dlma {command}", description=commands()[command][0])


def run_parser() -> Parser:
    r = Parser(prog="dlma run", description="the whole pipeline: notebooks executed with papermill, then the book")
    r.add_argument("--preset", default="default", help="params/<preset>.yaml (smoke, default, paper) or a YAML file")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset parameter (repeatable); unknown keys and wrong types are refused")
    r.add_argument("--run-id", default=None, help="run folder name under runs/ (default: the preset's name)")
    r.add_argument("--no-publish", action="store_true", help="do not copy executed notebooks into book/results")
    r.add_argument("--launcher", default=None, metavar="COMMAND",
                   help="run the sharded work (generate, score, pref-acc, train, stage 6's training) under this "
                        "launcher first, e.g. 'accelerate launch --config_file accelerate/ddp.yaml --num_processes 8'")
    r.add_argument("--print-commands", action="store_true",
                   help="print the sharded stages' commands under --launcher and stop, writing nothing (for "
                        "several machines: run them under each machine's launch, then dlma run on the main one)")
    return r


def usage() -> str:
    lines = ["usage: dlma COMMAND [options]   (dlma COMMAND --help for its options)", "",
             "Direct Large Model Alignment, offline. Commands:"]
    width = max(map(len, commands()))
    lines += [f"  {name:<{width}} {what}" for name, (what, _) in commands().items()]
    lines.append(f"  {'run':<{width}} the whole pipeline: notebooks executed with papermill, then the book")
    return "\n".join(lines)


def run_command(command: str, parsed: list) -> None:
    from . import stages

    if command in ("generate", "score", "pref-acc", "pair-study"):
        parsed = parsed[1:]  # the pairs file did its work when parsed
    if command == "generate":
        model_cfg, q, cfg, out = parsed
        rows = stages.run_generate(out.out, model_cfg, q.queries, cfg, q.n_queries, force=out.force)
        print(f"{len(rows)} pairs -> {os.path.join(out.out, 'pairs.jsonl')}")
    elif command == "score":
        model_cfg, pairs, cfg, out = parsed
        rows = stages.run_score(out.out, model_cfg, pairs.pairs, cfg, force=out.force)
        neg = sum(r["self_reward"] < 0 for r in rows)
        print(f"{len(rows)} pairs scored, {neg} with R < 0 -> {os.path.join(out.out, 'scored.jsonl')}")
    elif command == "pref-acc":
        from .preference import metrics_table

        model_cfg, data, cfg, out = parsed
        metrics = stages.run_pref_acc(out.out, model_cfg, data.pref_data, cfg, data.pref_limit, data.on_invalid,
                                      data.label_field, force=out.force)
        print(metrics_table(metrics))
    elif command == "pair-study":
        from .report import confirmation_frame, study_frame

        model_cfg, data, cfg, study, run = parsed
        result = stages.run_pair_study(run.run_dir, model_cfg, data.pref_data, cfg, study, data.pref_limit,
                                       data.label_field, force=run.force)
        print(study_frame(result).to_string(), confirmation_frame(result).to_string(), sep="\n\n")
    elif command == "split":
        split, out = parsed
        train, heldout = stages.run_split(out.out, split.pairs, split.holdout_fraction, split.seed, force=out.force)
        print(f"{len(train)} training pairs, {len(heldout)} held out -> {out.out}")
    elif command == "train":
        base, pairs, cfg, out = parsed
        summary = stages.run_train(out.out, ModelConfig(base.model, base.dtype, base.device), pairs.pairs, cfg,
                                   force=out.force)
        print(f"adapter -> {out.out}  ({summary['n_steps']} steps, final loss {summary['final_loss']})")
    elif command == "evaluate":
        from .report import alignment_frame

        model_cfg, cfg, run = parsed
        summary = stages.run_evaluate(run.run_dir, model_cfg, cfg, force=run.force)
        print(alignment_frame(summary).to_string())
    elif command == "baselines":
        from .baselines import run_baselines
        from .report import answers_frame, baselines_frame

        model_cfg, study, run = parsed
        result = run_baselines(run.run_dir, model_cfg, study, force=run.force)
        print(baselines_frame(result).to_string(), answers_frame(result).to_string(), sep="\n\n")
    elif command == "baselines-train":
        from .baselines import run_baselines

        model_cfg, study, run = parsed
        training = run_baselines(run.run_dir, model_cfg, study, force=run.force, train_only=True)
        for m, t in training.items():
            print(f"{m}: {t['n_steps']} steps, final loss {t['final_loss']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    if command in (None, "-h", "--help"):
        print(usage())
        return 0 if command else 2
    try:
        if command == "run":
            args = run_parser().parse_args(argv[1:])
        elif command in commands():
            parsed = stage_parser(command).parse_args_into_dataclasses(argv[1:])
        else:
            print(f"dlma: error: unknown command '{command}'\n{usage()}", file=sys.stderr)
            return 2
        if command == "run":
            from .pipeline import run_pipeline

            run_pipeline(args.preset, args.overrides, args.run_id, publish=not args.no_publish,
                         launcher=args.launcher, print_commands=args.print_commands)
        else:  # under a launch, the main process alone prints the summary (errors: every process, on stderr)
            from .quiet import launch_rank

            with contextlib.redirect_stdout(io.StringIO()) if launch_rank() > 0 else contextlib.nullcontext():
                run_command(command, parsed)
    except DLMAError as e:
        print(f"dlma {command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused: a folder not writable, a disk full, a path through a file
        where = f"{e.filename}: " if e.filename else ""
        print(f"dlma {command}: error: {where}cannot be written or read ({e.strerror or e})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dlma {command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
