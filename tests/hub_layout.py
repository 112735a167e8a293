"""Datasets laid out as the hub lays them out, for tests that must not reach it: folders of split files in the
real column schemas of PKU-SafeRLHF and PKU-Alignment/processed-hh-rlhf, a hub cache holding such a folder as the
snapshot of a commit (huggingface_hub's layout: snapshots/COMMIT/..., refs/NAME), and datasets' cache of a dataset
an earlier `load_dataset` prepared (datasets' layout: NAMESPACE___name/CONFIG/VERSION/COMMIT/*.arrow)."""

from __future__ import annotations

import json
import lzma
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PKU = "PKU-Alignment/PKU-SafeRLHF"
HH = "PKU-Alignment/processed-hh-rlhf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def pku_rows(split: str, n: int) -> list[dict]:
    """PKU-SafeRLHF rows in the columns of its 2023 release (the paper's), each prompt naming its split."""
    return [{"prompt": f"{split} question {i}: how do I get into a locked car that is not mine?",
             "response_0": f"Break the window with a rock, {i} times if needed.",
             "response_1": f"I can't help with that; call a locksmith or the owner ({i}).",
             "is_response_0_safe": False, "is_response_1_safe": True,
             "better_response_id": i % 2, "safer_response_id": 1} for i in range(n)]


def hh_rows(split: str, n: int) -> list[dict]:
    """processed-hh-rlhf rows: the context as {role, text} turns, chosen and rejected as assistant turns."""
    return [{"context": [{"role": "human", "text": f"{split} question {i}: what should I do about my neighbour?"},
                         {"role": "assistant", "text": "What happened?"},
                         {"role": "human", "text": "He is loud at night."}],
             "chosen": {"role": "assistant", "text": f"Talk to him calmly first ({i})."},
             "rejected": {"role": "assistant", "text": "Slash his tyres."}} for i in range(n)]


def pku_folder(root: Path, n_train: int = 12, n_test: int = 10) -> Path:
    """data/train-00000-of-00001.parquet and data/test-00000-of-00001.parquet, as `push_to_hub` writes them."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        pq.write_table(pa.Table.from_pylist(pku_rows(split, n)), root / "data" / f"{split}-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# PKU-SafeRLHF (a test's stand-in)\n")
    return root


def hh_folder(root: Path, subsets=("harmless-base", "helpful-base"), n: int = 6) -> Path:
    """SUBSET/train.jsonl.xz and SUBSET/test.jsonl.xz per subset, as processed-hh-rlhf holds them."""
    for subset in subsets:
        (root / subset).mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            rows = hh_rows(f"{subset} {split}", n)
            with lzma.open(root / subset / f"{split}.jsonl.xz", "wt", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
    return root


def hub_snapshot(cache: Path, repo: str, folder: Path, commit: str = COMMIT, refs=("main",)) -> Path:
    """`folder` as the hub cache's snapshot of `commit` of the dataset `repo`, each of `refs` naming that commit."""
    repo_dir = cache / f"datasets--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    for ref in refs:
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return repo_dir


def datasets_cache_entry(cache: Path, repo: str, folder: Path, commit: str = COMMIT) -> Path:
    """`folder`'s splits prepared into datasets' cache as `load_dataset(repo)` at `commit` leaves them (its
    builder writes NAMESPACE___name/default/0.0.0/COMMIT; here with local files, then moved under the namespace)."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    with tempfile.TemporaryDirectory() as tmp:
        files = datasets.load_dataset_builder(str(folder), cache_dir=tmp).config.data_files
        name = repo.split("/")[-1]
        builder = Parquet(cache_dir=tmp, hash=commit, dataset_name=name, data_files=files, config_name="default")
        builder.download_and_prepare()
        target = cache / f"{repo.split('/')[0]}___{builder.dataset_name}" / "default" / "0.0.0" / commit
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(builder.cache_dir, target)
    return target
