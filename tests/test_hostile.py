"""What a hostile user types (issue 30): each case ends in one line naming the file and what is wrong, nothing
lost, never a traceback."""

from __future__ import annotations

import json

import pytest
import torch

from dlma import report
from dlma.artifacts import read_json
from dlma.errors import DLMAError
from dlma.models import ModelConfig, check_model


def adapter_folder(tmp_path, base: str):
    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
              str(folder / "adapter_model.safetensors"))
    return folder


def test_a_truncated_adapter_is_one_line(tmp_path, tiny_model_dir):
    folder = adapter_folder(tmp_path, tiny_model_dir)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy cut off
    with pytest.raises(DLMAError, match=r"adapter_model\.safetensors: truncated \([\d,]+ bytes, its header describes"):
        check_model(ModelConfig(tiny_model_dir, adapter=str(folder)))


def test_an_adapter_folder_without_weights_names_the_file(tmp_path, tiny_model_dir):
    folder = adapter_folder(tmp_path, tiny_model_dir)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(DLMAError, match=r"adapter: a LoRA adapter folder without its weights \(adapter_model\."
                                        r"safetensors or adapter_model\.bin\)"):
        check_model(ModelConfig(tiny_model_dir, adapter=str(folder)))


def test_a_params_json_that_is_not_json_is_one_line(tmp_path):
    path = tmp_path / "params.json"
    path.write_text('{"seed": 0,\n "beta": ')
    with pytest.raises(DLMAError, match=r"params\.json:2: not JSON \(.*\); restore it, or delete the folder"):
        read_json(path)


def test_stage_3_without_both_judges_of_claim_1_reports_what_it_has():
    """`-p scorers length,random`: the notebook's agreement table says what is missing (it raised StopIteration)."""
    paired = [{"a": "length", "b": "random", "n": 4, "both": 1, "a_only": 1, "b_only": 1}]
    table = report.agreement(paired, "dlma", "rlaif")
    assert table.iloc[0, 0] == "this run did not score both dlma and rlaif"


def test_a_judge_url_with_credentials_is_refused_before_anything_is_written():
    from dlma.baselines import BaselineConfig

    with pytest.raises(DLMAError) as e:
        BaselineConfig(judge_url="https://alice:s3cret@judge.example/v1")
    assert "holds credentials" in str(e.value) and "s3cret" not in str(e.value) and "alice" not in str(e.value)


def test_a_judge_that_does_not_answer_says_so_while_it_retries(tmp_path, capsys):
    from dlma.judge import HttpJudge

    judge = HttpJudge("http://127.0.0.1:9/v1", "m", tmp_path / "cache.jsonl", retries=2, backoff_s=0.01, timeout_s=2)
    with pytest.raises(DLMAError, match=r"after 3 attempt\(s\); answers so far are cached"):
        judge.ask("which is better?")
    lines = [line for line in capsys.readouterr().err.splitlines() if "retrying" in line]
    assert len(lines) == 2 and lines[0].endswith("(1 of 2)") and "127.0.0.1:9" in lines[0]


def test_a_folder_holding_a_users_params_json_is_never_written_into(tmp_path):
    from dlma.artifacts import record_params

    folder = tmp_path / "userproj"
    folder.mkdir()
    (folder / "params.json").write_text('{"my": "own settings"}\n')
    for force in (False, True):
        with pytest.raises(DLMAError, match=r"userproj: holds files that no dlma stage recorded here \(params\.json\)"):
            record_params(folder, {"seed": 0}, "hint", force=force)
    assert (folder / "params.json").read_text() == '{"my": "own settings"}\n'


def test_force_removes_nothing_when_the_folder_also_holds_a_users_file(tmp_path):
    from dlma.artifacts import record_params

    folder = tmp_path / "stage"
    record_params(folder.mkdir() or folder, {"seed": 0}, "hint")
    (folder / "results.txt").write_text("mine")
    before = (folder / "params.json").read_text()
    with pytest.raises(DLMAError, match=r"holds results\.txt, which this stage did not write: --force removes nothing"):
        record_params(folder, {"seed": 1}, "hint", force=True)
    assert (folder / "params.json").read_text() == before and (folder / "results.txt").read_text() == "mine"


def test_a_full_disk_while_saving_the_adapter_is_one_line(tmp_path):
    from dlma.train import save_adapter

    class Saves:
        def save_pretrained(self, folder, **kw):
            (folder / "adapter_config.json").write_text('{"target_modules": ["q_proj"]}')

    class FullDisk:
        def save_pretrained(self, folder):
            raise Exception("No space left on device (os error 28)")  # as the tokenizers library raises it

    with pytest.raises(DLMAError, match=r"the trained adapter could not be saved \(Exception: No space left on "
                                        r"device \(os error 28\)\); free some space and rerun"):
        save_adapter(Saves(), FullDisk(), tmp_path)


def test_papermill_with_a_misspelt_parameter_shows_the_one_line_only(tmp_path):
    import papermill as pm

    from dlma.presets import ROOT

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(ROOT / "notebooks" / "01_generate.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"run_dir": str(tmp_path / "run"), "n_querie": 2}, cwd=str(ROOT),
                            progress_bar=False, kernel_name="python3")
    shown = [line for line in e.value.traceback if line.strip()]
    assert len(shown) == 1 and shown[0].startswith("DLMAError: ") and "did you mean 'n_queries'" in shown[0], shown


def test_a_hub_folder_with_a_split_cut_short_or_two_formats_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlma.data import load_examples

    rows = [{"prompt": f"question {k}?"} for k in range(3)]
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), data / "test-00000-of-00002.parquet")
    with pytest.raises(DLMAError, match=r"split 'test' has 1 of its 2 shards; .*test-00001-of-00002\.parquet is "
                                        r"missing"):
        load_examples(str(tmp_path / "ds"), split="test")
    pq.write_table(pa.Table.from_pylist(rows), data / "test-00001-of-00002.parquet")
    assert len(load_examples(str(tmp_path / "ds"), split="test")) == 6
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DLMAError, match=r"split 'test' is read from test-00000-of-00002\.parquet and others, and "
                                        r".*test\.jsonl beside it would be passed over"):
        load_examples(str(tmp_path / "ds"), split="test")


def test_a_library_message_is_cut_to_one_short_line():
    from dlma.data import _first_line

    assert len(_first_line(ValueError("x" * 3000 + "\nmore"))) == 203
