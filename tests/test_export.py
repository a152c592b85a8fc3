"""`tscale export` and `--push_to_hub`: the adapter folder, its card, and the push against a stand-in Hub."""

import json
import os
from pathlib import Path

import pytest
import torch

from tscale_train import cli
from tscale_train.config import OnlineDPOConfig
from tscale_train.trainer import OnlineDPOTrainer


def tiny_config(out: Path, **overrides) -> OnlineDPOConfig:
    values = dict(
        model="tiny",
        dtype="float32",
        reward="rewards.synthetic:brightness",
        budget=4,
        popsize=2,
        k_elites=2,
        rounds=2,
        prompts_per_round=4,
        epochs_per_round=2,
        train_batch_size=2,
        lora_rank=4,
        lora_target_modules="all_linear",
        eval_every=1,
        eval_budget=2,
        max_eval_prompts=2,
        checkpoint_every=1,
        gradient_checkpointing=False,
        output_dir=str(out),
        progress=False,
        seed=0,
    )
    values.update(overrides)
    return OnlineDPOConfig(**values)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, kit_dir) -> Path:
    return OnlineDPOTrainer(tiny_config(tmp_path_factory.mktemp("export") / "run")).train()


class StandInHub:
    """Records what `create_repo`, `create_branch` and `upload_folder` receive; can fail the upload."""

    def __init__(self, fail_upload: type[Exception] | None = None, **_):
        self.calls, self.fail_upload = [], fail_upload

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        if self.fail_upload:
            raise self.fail_upload(
                "connection reset by peer while uploading"
            )  # the network failing mid-upload
        from tscale_train.export.hub import folder_files

        assert kwargs["ignore_patterns"]  # the hidden markers stay local
        self.calls.append(
            (
                "upload_folder",
                kwargs["repo_id"],
                {**kwargs, "files": folder_files(Path(kwargs["folder_path"]))},
            )
        )

        class Commit:
            commit_url = f"https://hub.example/{kwargs['repo_id']}/commit/1"

        return Commit()


def export_args(run: Path, **overrides):
    from tscale_train.export.run import ExportArguments

    values = dict(
        run=str(run), repo_id="me/klein-cat-dpo", token="hf_test_token", out=str(run.parent / "export")
    )
    values.update(overrides)
    return ExportArguments(**values)


def generate(pipe, seed: int = 3) -> torch.Tensor:
    from tscale_train.generation import generator_for_pipeline

    generator = generator_for_pipeline(pipe)
    return generator.generate(generator.initial_noise(seed), generator.encode_prompt("a red cube")).images


def test_the_exported_adapter_loads_with_diffusers_and_reproduces_the_trained_output(run_dir):
    from diffusers import Flux2KleinPipeline

    from tscale_train.export.run import export_run
    from tscale_train.loading import load_lora, load_pipeline

    hub = StandInHub()
    (result,) = export_run(export_args(run_dir), api=hub, log=lambda *_: None)
    folder = run_dir.parent / "export" / "model"
    for name in (
        "pytorch_lora_weights.safetensors",
        "README.md",
        "config.yaml",
        "metrics.jsonl",
        "eval_curve.png",
        "images/example_0_base.png",
        "images/example_0_lora.png",
    ):
        assert (folder / name).is_file(), name
    assert result.files == sorted(hub.calls[-1][2]["files"]) and hub.calls[0][0] == "create_repo"
    assert hub.calls[0][2]["exist_ok"] is True  # re-running an export updates the repo
    reference = load_pipeline("tiny", dtype="float32")
    load_lora(reference, str(run_dir))
    exported = load_pipeline("tiny", dtype="float32")
    assert isinstance(exported, Flux2KleinPipeline)
    exported.load_lora_weights(str(folder))
    assert torch.equal(generate(exported), generate(reference))


def test_the_model_card_carries_the_fields_and_its_snippet_runs(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    from tscale_train.export.card import CARD_TAGS, SNIPPET_END, SNIPPET_START
    from tscale_train.export.run import export_run
    from tscale_train.tiny import generator_settings, tiny_pipeline_dir

    export_run(export_args(run_dir, out=str(tmp_path / "export")), api=StandInHub(), log=lambda *_: None)
    folder = tmp_path / "export" / "model"
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "tiny" and card.data.library_name == "diffusers"
    assert set(CARD_TAGS) <= set(card.data.tags)
    widget = card.data.to_dict()["widget"]
    assert widget and all((folder / item["output"]["url"]).is_file() for item in widget)
    for text in (
        "rewards.synthetic:brightness",
        "| search budget (candidates per prompt) | 4 |",
        "best_vs_worst",
        "| round | budget 0 | with SES |",
        "eval_curve.png",
    ):
        assert text in card.text, text
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert f"| 1 | {rows[-1]['eval/reward_budget0']:.4f} |" in card.text
    snippet = card.text.split(SNIPPET_START, 1)[1].split(SNIPPET_END, 1)[0]
    # The snippet as a user runs it, with the tiny model and the folder standing in for the Hub ids.
    snippet = snippet.replace('"tiny"', repr(str(tiny_pipeline_dir()))).replace(
        '"me/klein-cat-dpo"', repr(str(folder))
    )
    # The tiny text encoder has 2 layers, not klein's 36: pass the kit's settings the real model needs none of.
    settings = generator_settings(tiny_pipeline_dir())
    snippet = snippet.replace(
        "num_inference_steps=",
        (
            f"text_encoder_out_layers={settings['text_encoder_out_layers']}, max_sequence_length={settings['max_sequence_length']}, "
            f"height={settings['default_resolution']}, width={settings['default_resolution']}, num_inference_steps="
        ),
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "model-card-snippet", "exec"), {})
    assert (tmp_path / "example.png").is_file()


def test_a_checkpoint_and_a_run_still_training_export_the_same_way(tmp_path, kit_dir):
    from tscale_train.export.adapter import find_adapter
    from tscale_train.export.run import export_run

    out = tmp_path / "run"
    OnlineDPOTrainer(tiny_config(out)).train(stop_after_rounds=1)
    source = find_adapter(out)
    assert source.label == "checkpoint-00000" and source.round == 0
    assert find_adapter(out / "checkpoints" / "checkpoint-00000").lora_file == source.lora_file
    hub = StandInHub()
    export_run(export_args(out, examples=False), api=hub, log=lambda *_: None)
    rows = [
        json.loads(line)
        for line in (tmp_path / "export" / "model" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(row["round"] for row in rows) == 0


def test_pairs_go_to_a_dataset_repo_and_a_failed_upload_reports_nothing_done(run_dir, tmp_path):
    from tscale_train.export.run import export_run

    hub = StandInHub()
    lines = []
    results = export_run(
        export_args(
            run_dir,
            out=str(tmp_path / "e"),
            include_pairs="me/klein-cat-pairs",
            examples=False,
            private=True,
            revision="v1",
        ),
        api=hub,
        log=lines.append,
    )
    assert [result.repo_type for result in results] == ["model", "dataset"]
    uploads = [call for call in hub.calls if call[0] == "upload_folder"]
    assert [call[2]["repo_type"] for call in uploads] == ["model", "dataset"]
    assert all(call[2]["revision"] == "v1" for call in uploads)
    assert all(call[2]["private"] is True for call in hub.calls if call[0] == "create_repo")
    assert any(name.endswith(".parquet") for name in uploads[1][2]["files"])
    assert not any("hf_test_token" in line for line in lines)

    class ClientConnectError(Exception):
        """Like an HTTP client's own network error, which is neither an OSError nor an HfHubHTTPError."""

    for failure in (ConnectionError, ClientConnectError):
        lines.clear()
        with pytest.raises(OSError, match="nothing was published"):
            export_run(
                export_args(run_dir, out=str(tmp_path / "f"), examples=False),
                api=StandInHub(fail_upload=failure),
                log=lines.append,
            )
        assert not any(line.startswith("pushed") for line in lines)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"repo_id": "klein-cat-dpo"}, "not of the form namespace/name"),
        ({"repo_id": "me/bad name"}, "not a valid repo id"),
        ({"format": "ckpt"}, "--format 'ckpt'"),
        ({"run": "no/such/run"}, "does not exist"),
    ],
)
def test_bad_export_arguments(overrides, message, run_dir):
    overrides = dict(overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        export_args(Path(overrides.pop("run", run_dir)), **overrides)


def test_no_token_fails_before_any_work(run_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token"):
        export_args(run_dir, token=None)
    export_args(run_dir, token=None, dry_run=True)  # a dry run sends nothing and needs none
    with pytest.raises(ValueError, match="no Hugging Face token"):
        cli.make_trainer(tiny_config(run_dir.parent / "fresh", push_to_hub=True, hub_model_id="me/x"))


def test_no_adapter_and_a_mismatched_adapter_are_clear_errors(run_dir, tmp_path):
    import shutil

    from tscale_train.export.adapter import build_adapter_folder, find_adapter

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("model: tiny\n")
    with pytest.raises(FileNotFoundError, match="no adapter"):
        find_adapter(tmp_path / "empty")
    other = tmp_path / "other"
    shutil.copytree(
        run_dir, other, ignore=shutil.ignore_patterns("checkpoints", "pairs", "hub_export", ".tscale*")
    )
    (other / "config.yaml").write_text(
        (other / "config.yaml").read_text().replace("model: tiny", "model: dims-klein-4b")
    )
    with pytest.raises(ValueError, match="trained for another base model"):
        build_adapter_folder(find_adapter(other), tmp_path / "out", repo_id="me/x", examples=False)


def test_cli_dry_run_lists_the_files_and_sends_nothing(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.HfApi", lambda *a, **k: pytest.fail("the Hub was contacted"))
    code = cli.main(
        [
            "export",
            str(run_dir),
            "--repo-id",
            "me/klein-cat-dpo",
            "--dry-run",
            "--no_examples",
            "--out",
            str(tmp_path / "x"),
            "--format",
            "comfyui",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        "dry run: would upload" in printed
        and "pytorch_lora_weights.safetensors" in printed
        and "README.md" in printed
    )


def test_push_to_hub_at_the_end_of_training(tmp_path, monkeypatch, kit_dir):
    hubs = []

    def make_hub(*args, **kwargs):
        hubs.append(StandInHub())
        return hubs[-1]

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr("huggingface_hub.HfApi", make_hub)
    out = cli.make_trainer(
        tiny_config(tmp_path / "run", rounds=1, push_to_hub=True, hub_model_id="me/pushed")
    ).train()
    (hub,) = hubs
    upload = next(call for call in hub.calls if call[0] == "upload_folder")
    assert (
        upload[1] == "me/pushed"
        and "README.md" in upload[2]["files"]
        and "images/example_0_lora.png" in upload[2]["files"]
    )
    assert (out / "hub_export" / "model" / "pytorch_lora_weights.safetensors").is_file()
    assert "hf_test_token" not in (out / "config.yaml").read_text()
    assert os.environ["HF_TOKEN"] == "hf_test_token"


def test_comfyui_export_of_a_family_without_the_original_layout_fails_before_any_work(run_dir, tmp_path):
    """The run's own family decides the key map: a Z-Image run asking for --format comfyui is refused by
    name before a folder is built or a model loaded (the klein run beside it exports, as above)."""
    import json
    import shutil

    from tscale_train.export.run import export_run

    other = tmp_path / "z_image_run"
    shutil.copytree(
        run_dir, other, ignore=shutil.ignore_patterns("checkpoints", "pairs", "hub_export", ".tscale*")
    )
    info = json.loads((other / "pipeline.json").read_text())
    (other / "pipeline.json").write_text(json.dumps({**info, "pipeline_class": "ZImagePipeline"}))
    out = tmp_path / "export"
    with pytest.raises(ValueError, match="Z-Image LoRAs have no ComfyUI"):
        export_run(export_args(other, out=str(out), format="comfyui"), api=StandInHub(), log=lambda *_: None)
    assert not out.exists()
