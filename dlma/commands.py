"""The one registry of what a user can run: each `dlma` command (its help, the dataclasses its options come
from, the stage function it calls, the line it prints) and each notebook of `dlma run` (the commands it
runs, with their paths in the run folder). The CLI, `dlma run`, the launcher's command lines, the notebooks
and the book's parameter table all read it, so a parameter is declared once: as a dataclass field.

Names are given as "module:attribute" and imported when used: `train` pulls in TRL (seconds), and `dlma
--help` should not.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from . import lock
from .errors import DLMAError, did_you_mean
from .layout import FOLDERS, Run
from .params import PATHS, PairsFile, argument_parser, fields_of, pairs_of, parse


def load(name: str):
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(f"dlma.{module}"), attr)


@dataclass(frozen=True)
class Command:
    help: str
    configs: tuple[str, ...]  # the dataclasses its options come from, in order
    stage: str  # called with one instance of each; a pairs file as the prompt pairs it read (`prompt_pairs=`)
    summary: str  # (result, its out or run argument) -> the line(s) the CLI prints

    def types(self) -> list[type]:
        return [load(c) for c in self.configs]

    def parser(self, name: str):
        return argument_parser(self.types(), prog=f"dlma {name}", description=self.help)

    def run(self, configs: list, **kwargs):
        if any(isinstance(c, PairsFile) for c in configs):
            kwargs["prompt_pairs"] = pairs_of(configs)
        try:
            return load(self.stage)(*[c for c in configs if not isinstance(c, PairsFile)], **kwargs)
        finally:  # a stage that failed midway lets its folder go (a finished one already has)
            lock.release_all()


MODEL, PAIRS_FILE = "models:ModelConfig", "params:PairsFile"
RUN_HELP = "the whole pipeline: notebooks executed with papermill, then the book"  # `dlma run`, not a stage
COMPARE_HELP = "a run beside others, paired on the items they share (stored outputs only)"  # `dlma compare`

COMMANDS = {
    "generate": Command("contrastive response pairs (o1 under p+, o2 under p-)",
                        (PAIRS_FILE, MODEL, "params:Queries", "generate:GenerateConfig", "params:Out"),
                        "generate:run_generate", "generate:summary"),
    "score": Command("self-rewarding score R of generated pairs",
                     (PAIRS_FILE, MODEL, "params:Pairs", "score:ScoreConfig", "params:Out"),
                     "score:run_score", "score:summary"),
    "pref-acc": Command("preference accuracy on human-labelled pairs",
                        (PAIRS_FILE, MODEL, "params:PrefData", "preference:PrefAccConfig", "params:Out"),
                        "preference:run_pref_acc", "preference:summary"),
    "pair-study": Command("stage 3b in a run folder: prompt pairs selected on a slice, confirmed on the rest",
                          (PAIRS_FILE, MODEL, "params:PrefData", "study:StudyConfig", "params:Run"),
                          "study:run_pair_study", "report:study_summary"),
    "split": Command("hold out a share of scored pairs (train.jsonl, heldout.jsonl)",
                     ("params:Pairs", "params:Split", "params:Out"), "train:run_split", "train:split_summary"),
    "train": Command("QLoRA DLMA training on scored pairs",
                     ("models:BaseModel", "params:Pairs", "train:TrainConfig", "params:Out"),
                     "train:run_train", "train:summary"),
    "evaluate": Command("stage 5 in a run folder: the trained adapter against its base",
                        (MODEL, "alignment:EvalConfig", "params:Run"), "alignment:run_evaluate",
                        "alignment:summary"),
    "baselines": Command("stage 6 in a run folder: every baseline on stage 4's pairs and budget, judged on stage "
                         "5's prompts", (MODEL, "baselines:BaselineConfig", "params:Run"),
                         "baselines:run_baselines", "baselines:summary"),
    "baselines-train": Command("stage 6's training alone (every process of a launch shares each method's "
                               "training)", (MODEL, "baselines:BaselineConfig", "params:Run"),
                               "baselines:train_baselines", "baselines:training_summary"),
}


@dataclass(frozen=True)
class Step:
    """One command of a notebook: its paths in the run folder ("" is the run folder itself), whether the
    notebook runs it, and whether `dlma run --launcher` runs it under the launcher first."""

    command: str
    paths: dict
    in_notebook: bool = True
    launched: bool = False


F = FOLDERS  # each stage's folder name, from the run layout (`dlma.layout`)
NOTEBOOKS = {  # a Step's paths are named as the layout names them: "" the run folder, "score" a stage's folder
    F["generate"]: (Step("generate", {"out": "generate"}, launched=True),),
    F["score"]: (Step("score", {"pairs": "generate.pairs", "out": "score"}, launched=True),),
    F["pref"]: (Step("pref-acc", {"out": "pref"}, launched=True),),
    F["study"]: (Step("pair-study", {"run_dir": ""}),),
    F["train"]: (Step("split", {"pairs": "score.scored", "out": "train"}),
                 Step("train", {"pairs": "train.train", "out": "train.adapter"}, launched=True)),
    F["evaluate"]: (Step("evaluate", {"run_dir": ""}),),
    # the methods' training on every process of a launch first; answers and verdicts in the notebook
    F["baselines"]: (Step("baselines-train", {"run_dir": ""}, in_notebook=False, launched=True),
                     Step("baselines", {"run_dir": ""})),
}
STAGES = tuple(NOTEBOOKS)


def notebook_fields(stage: str) -> dict:
    """{name: field} of the parameters a notebook declares: every option of its commands but the paths, which
    the run folder gives."""
    out = {}
    for step in NOTEBOOKS[stage]:
        out.update({k: f for k, f in fields_of(COMMANDS[step.command].types()).items() if k not in PATHS})
    return out


def step_values(step: Step, values: dict, run_dir) -> dict:
    """The options of one step: its paths in `run_dir`, then the values among `values` that it takes."""
    names = fields_of(COMMANDS[step.command].types())
    run = Run(run_dir)
    paths = {k: str(run.path(name)) if name else str(run_dir) for k, name in step.paths.items()}
    return {**paths, **{k: v for k, v in values.items() if k in names and k not in PATHS}}


def misspelt(stage: str, declared, values: dict) -> None:
    """papermill only warns of a parameter the notebook does not declare (`-p pref_max_lenght 100`), and the stage
    would run with the default: a plain value named within a letter or two of a parameter is refused instead.
    Other globals (a notebook's own variables, found when its cells are run again) are left alone."""
    for key, value in values.items():
        if key in declared or key.startswith("_") or not isinstance(value, (str, int, float)):
            continue
        hint = did_you_mean(key, declared, cutoff=0.8)
        if hint:
            raise DLMAError(f"notebook {stage}: parameter '{key}' is not one of its parameters{hint}")


def run_stage(stage: str, values: dict):
    """A notebook's one call: its parameters (the names it declares, taken from `values`, e.g. its globals())
    parsed as the CLI parses them, then each of its commands run in the run folder `values["run_dir"]`.
    Returns the last command's result."""
    declared = notebook_fields(stage)
    misspelt(stage, declared, values)
    given = {k: v for k, v in values.items() if k in declared}
    result = None
    for step in NOTEBOOKS[stage]:
        if step.in_notebook:
            command = COMMANDS[step.command]
            configs = parse(command.types(), step_values(step, given, values["run_dir"]),
                            lambda key, stage=stage: f"notebook {stage}: parameter '{key}'")
            result = command.run(configs)
    return result
