"""A run folder's layout: each stage's folder, and the files a later stage, a notebook or `dlma compare` reads
from it, named once. `Run("runs/full").generate.pairs` is `runs/full/01_generate/pairs.jsonl`;
`run.evaluate.settings()` is the parameters stage 5 ran with (its params.json), which stage 6 inherits."""

from __future__ import annotations

from pathlib import Path

from .artifacts import read_json
from .errors import DLMAError

# attribute: (the stage's folder, {attribute: file or folder within it})
LAYOUT = {
    "generate": ("01_generate", {"pairs": "pairs.jsonl"}),
    "score": ("02_self_reward", {"scored": "scored.jsonl"}),
    "pref": ("03_preference_accuracy", {"predictions": "predictions.jsonl", "metrics": "metrics.json",
                                        "pair_lengths": "pair_lengths.json"}),
    "study": ("03b_pair_study", {"scores": "scores.jsonl", "study": "study.json"}),
    "train": ("04_train_dlma", {"train": "train.jsonl", "heldout": "heldout.jsonl", "adapter": "adapter",
                                "weights": "adapter/adapter_model.safetensors",
                                "summary": "adapter/train_summary.json", "log": "adapter/train_log.jsonl"}),
    "evaluate": ("05_evaluate_alignment", {"responses": "responses.jsonl", "human_pairs": "human_pairs.jsonl",
                                           "heldout_generated": "heldout_generated.jsonl",
                                           "alignment": "alignment.json"}),
    "baselines": ("06_baselines", {"responses": "responses.jsonl", "judgements": "judgements.jsonl",
                                   "result": "baselines.json"}),
}
FOLDERS = {attr: folder for attr, (folder, _) in LAYOUT.items()}  # the stages' folder names, in order


class StageDir:
    """One stage's folder (`.folder`), its files as attributes, and the parameters it ran with."""

    def __init__(self, folder: Path, files: dict[str, str]):
        self.folder, self._files = folder, files

    def __getattr__(self, name: str) -> Path:
        files = self.__dict__.get("_files", {})
        if name not in files:
            raise AttributeError(f"{self.__dict__.get('folder')}: no file named {name!r} in the layout")
        return self.folder / files[name]

    @property
    def params(self) -> Path:
        return self.folder / "params.json"

    def settings(self, needed_by: str = "") -> dict:
        """The parameters this stage ran with (its params.json): how a later stage inherits them."""
        if not self.params.is_file():
            raise DLMAError(f"{self.params}: no such file (run {self.folder.name} first"
                            f"{f'; {needed_by} reads its settings' if needed_by else ''})")
        return read_json(self.params)


class Run:
    """A run folder: `run.generate`, `run.score`, ... `run.baselines` are its stages' `StageDir`s."""

    def __init__(self, root):
        self.root = Path(root)
        for attr, (folder, files) in LAYOUT.items():
            setattr(self, attr, StageDir(self.root / folder, files))

    def path(self, name: str) -> Path:
        """A path named as the registry names it: "" (the run folder), "score" (a stage's folder) or
        "generate.pairs" (a file)."""
        if not name:
            return self.root
        stage, _, file = name.partition(".")
        return getattr(getattr(self, stage), file) if file else getattr(self, stage).folder
