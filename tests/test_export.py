"""`tscale export` and `--push_to_hub`: the adapter folder, its card, and the push against a stand-in Hub."""

import json
import os
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_run_config

from tscale_train import cli
from tscale_train.config import OnlineDPOConfig
from tscale_train.trainer import OnlineDPOTrainer


def tiny_config(out: Path, **overrides) -> OnlineDPOConfig:
    settings = dict(
        epochs_per_round=2,
        lora_target_modules="all_linear",
        eval_every=1,
        eval_budget=2,
        max_eval_prompts=2,
        checkpoint_every=1,
        gradient_checkpointing=False,
        progress=False,
    )
    return tiny_run_config(out, **{**settings, **overrides})


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


def card_snippet(folder: Path) -> str:
    """The usage snippet of the model card in `folder`, as a reader copies it."""
    from huggingface_hub import ModelCard

    from tscale_train.export.card import SNIPPET_END, SNIPPET_START

    text = ModelCard.load(folder / "README.md").text
    return text.split(SNIPPET_START, 1)[1].split(SNIPPET_END, 1)[0]


def run_card_snippet(folder: Path, repo_id: str, workdir: Path, monkeypatch, base: dict | None = None):
    """Run the card's snippet with the export folder standing in for the Hub repo `repo_id` (and `base`'s local
    folders for the placeholders of local base models); returns the image it saves."""
    from PIL import Image

    snippet = card_snippet(folder)
    assert f'"{repo_id}"' in snippet
    for old, new in {repo_id: str(folder), **(base or {})}.items():
        snippet = snippet.replace(f'"{old}"', repr(new))
    workdir.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(workdir)
    exec(compile(snippet, "model-card-snippet", "exec"), {})
    return Image.open(workdir / "example.png")


def test_the_model_card_carries_the_fields_and_its_snippet_runs(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    from tscale_train.export.card import CARD_TAGS
    from tscale_train.export.run import export_run

    export_run(export_args(run_dir, out=str(tmp_path / "export")), api=StandInHub(), log=lambda *_: None)
    folder = tmp_path / "export" / "model"
    card = ModelCard.load(folder / "README.md")
    # The kit has no Hub page: no base_model (the Hub links it) and no link to one.
    assert card.data.base_model is None and card.data.library_name == "diffusers"
    assert "huggingface.co/tiny" not in card.content and "`tiny` (tscale-train's offline" in card.text
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
    # The snippet as a user runs it: only the repo id is swapped (for the folder); the kit comes from
    # tscale-train, and the call carries what its 2-layer text encoder needs (not klein's layers 9, 18, 27).
    snippet = card_snippet(folder)
    assert 'kit_pipeline_dir("tiny")' in snippet and "text_encoder_out_layers=[1, 2]" in snippet
    image = run_card_snippet(folder, "me/klein-cat-dpo", tmp_path / "user", monkeypatch)
    assert image.size == (64, 64)  # the kit's resolution, as the run sampled


def test_the_card_of_a_hub_model_links_it_and_calls_the_pipeline_with_its_defaults(
    run_dir, tiny_pipe, tmp_path
):
    """A run of a real checkpoint: `base_model` and the link name its Hub page, and the snippet leaves the
    text-encoding settings that equal the pipeline's own defaults out (what the generator records for klein)."""
    import shutil

    from huggingface_hub import ModelCard

    from tscale_train.export.adapter import find_adapter
    from tscale_train.export.card import write_model_card
    from tscale_train.generation import generator_class

    model = "black-forest-labs/FLUX.2-klein-4B"
    other = tmp_path / "run"
    shutil.copytree(
        run_dir, other, ignore=shutil.ignore_patterns("checkpoints", "pairs", "hub_export", ".tscale*")
    )
    (other / "config.yaml").write_text(
        (other / "config.yaml").read_text().replace("model: tiny", f"model: {model}")
    )
    # What a run of the real model records: klein's own generator settings, at klein's size.
    generator = generator_class("Flux2KleinPipeline")(tiny_pipe, height=1024, width=1024)
    info = json.loads((other / "pipeline.json").read_text())
    info.update(height=1024, width=1024, prompt_call_kwargs=generator.prompt_call_kwargs())
    (other / "pipeline.json").write_text(json.dumps(info))
    assert info["prompt_call_kwargs"]["text_encoder_out_layers"] == [9, 18, 27]

    folder = tmp_path / "model"
    folder.mkdir()
    write_model_card(
        folder, find_adapter(other), [], repo_id="me/klein-cat-dpo", examples=[], has_curve=False
    )
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == model
    assert f"[`{model}`](https://huggingface.co/{model})" in card.text
    snippet = card_snippet(folder)
    compile(snippet, "model-card-snippet", "exec")
    assert f'Flux2KleinPipeline.from_pretrained("{model}", dtype=dtype)' in snippet
    assert "height=1024" in snippet and "guidance_scale=1.0" in snippet and "num_inference_steps=4" in snippet
    assert "text_encoder_out_layers" not in snippet and "max_sequence_length" not in snippet
    assert "tscale_train" not in snippet  # a hub model needs nothing of tscale-train
    assert f"tscale ses --model {model} --lora me/klein-cat-dpo" in card.text


def test_the_card_of_a_local_base_model_names_no_local_path_and_its_snippet_runs(
    run_dir, tmp_path, monkeypatch
):
    """A run of a local pipeline folder: the card names the folder, not its path (a placeholder in the snippet,
    which runs once the reader's copy of the folder stands in for it)."""
    import shutil

    from huggingface_hub import ModelCard

    from tscale_train.export.run import export_run
    from tscale_train.tiny import tiny_pipeline_dir

    local = tiny_pipeline_dir()
    other = tmp_path / "run"
    shutil.copytree(
        run_dir, other, ignore=shutil.ignore_patterns("checkpoints", "pairs", "hub_export", ".tscale*")
    )
    (other / "config.yaml").write_text(
        (other / "config.yaml").read_text().replace("model: tiny", f"model: {local}")
    )
    export_run(
        export_args(other, out=str(tmp_path / "export"), examples=False),
        api=StandInHub(),
        log=lambda *_: None,
    )
    folder = tmp_path / "export" / "model"
    card = ModelCard.load(folder / "README.md")
    assert str(local) not in card.content and "huggingface.co/" + local.name not in card.content
    assert card.data.base_model is None
    placeholder = f"path/to/{local.name}"
    assert f'from_pretrained("{placeholder}"' in card_snippet(folder)
    image = run_card_snippet(
        folder, "me/klein-cat-dpo", tmp_path / "user", monkeypatch, base={placeholder: str(local)}
    )
    assert image.size == (64, 64)


@pytest.mark.parametrize("pipeline_json", ["without prompt_call_kwargs", "absent"])
def test_the_snippet_of_an_older_run_takes_the_kits_settings_from_its_folder(
    pipeline_json, run_dir, tmp_path, monkeypatch
):
    """A run from before pipeline.json recorded the call's settings (or before pipeline.json): the kit's
    `tscale_tiny.json` still says what its text encoder needs."""
    import shutil

    from tscale_train.export.adapter import find_adapter
    from tscale_train.export.card import write_model_card
    from tscale_train.lora import LORA_WEIGHT_NAME

    other = tmp_path / "run"
    shutil.copytree(
        run_dir, other, ignore=shutil.ignore_patterns("checkpoints", "pairs", "hub_export", ".tscale*")
    )
    info = json.loads((other / "pipeline.json").read_text())
    del info["prompt_call_kwargs"]
    (other / "pipeline.json").write_text(json.dumps(info))
    if pipeline_json == "absent":
        (other / "pipeline.json").unlink()
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copyfile(other / LORA_WEIGHT_NAME, folder / LORA_WEIGHT_NAME)
    write_model_card(
        folder, find_adapter(other), [], repo_id="me/klein-cat-dpo", examples=[], has_curve=False
    )
    snippet = card_snippet(folder)
    assert "text_encoder_out_layers=[1, 2]" in snippet and "max_sequence_length=64" in snippet
    image = run_card_snippet(folder, "me/klein-cat-dpo", tmp_path / "user", monkeypatch)
    # Without pipeline.json (nor a size in config.yaml) the pipeline picks the size.
    if pipeline_json != "absent":
        assert image.size == (info["width"], info["height"])


def _kit_run(model: str, out: Path) -> Path:
    """One short round on a kit: enough for an adapter and a pipeline.json."""
    config = tiny_config(out, model=model, rounds=1, prompts_per_round=2, epochs_per_round=1, eval_every=0)
    return OnlineDPOTrainer(config).train()


# One-round runs of about a second each: klein base (50 steps, CFG) and the kits of the other families, those
# `tscale plan` does not describe (Qwen-Image, FLUX.2-dev, SD3) included: their adapters are checked against the
# transformer config of the saved pipeline.
@pytest.mark.parametrize(
    "model", ["tiny-z-image", "tiny-base", "tiny-flux1", "tiny-qwen-image", "tiny-flux2-dev", "tiny-sd3"]
)
def test_the_card_snippet_of_another_family_kit_runs(model, tmp_path, monkeypatch, kit_dir):
    from tscale_train.export.run import export_run

    run = _kit_run(model, tmp_path / "run")
    export_run(
        export_args(run, out=str(tmp_path / "export"), examples=False), api=StandInHub(), log=lambda *_: None
    )
    if model == "tiny-qwen-image":  # its true CFG, with its " " negative prompt
        snippet = card_snippet(tmp_path / "export" / "model")
        assert "true_cfg_scale=4.0" in snippet and 'negative_prompt=" "' in snippet
    info = json.loads((run / "pipeline.json").read_text())
    image = run_card_snippet(
        tmp_path / "export" / "model", "me/klein-cat-dpo", tmp_path / "user", monkeypatch
    )
    assert image.size == (info["width"], info["height"])


def test_an_adapter_of_an_unplanned_family_is_checked_against_its_pipelines_transformer(tmp_path, kit_dir):
    """No `tscale plan` description: the check reads the saved pipeline's transformer config, and an adapter made
    for another family's transformer is still refused by name."""
    from tscale_train.export.adapter import check_adapter_matches_model, find_adapter

    source = find_adapter(_kit_run("tiny-sd3", tmp_path / "run"))
    assert check_adapter_matches_model(source.lora_file, "tiny-sd3") > 0
    with pytest.raises(ValueError, match="trained for another base model"):
        check_adapter_matches_model(source.lora_file, "tiny-qwen-image")


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
