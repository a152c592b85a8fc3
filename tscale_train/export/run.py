"""`tscale export`: a run's adapter (and optionally its pairs) to the Hub, and the same at the end of training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .hub import PushResult, check_repo_id, push_folder, resolve_token

if TYPE_CHECKING:
    from .adapter import AdapterSource

FORMATS = ("diffusers", "comfyui")
RUN_HELP = "a run's --output_dir (finished or still training) or a checkpoint dir (also --run RUN)"


def _help(text: str) -> dict:
    return {"metadata": {"help": text}}


@dataclass
class ExportArguments:
    """What `tscale export RUN --repo-id ID ...` takes."""

    run: str | None = field(
        default=None, **_help("the run to export, also given as RUN: " + RUN_HELP.split(" (also")[0])
    )
    repo_id: str | None = field(default=None, **_help("model repo to push the adapter to, namespace/name"))
    include_pairs: str | None = field(default=None, **_help("also push the run's pairs to this dataset repo"))
    private: bool = field(default=False, **_help("create the repos private"))
    revision: str | None = field(default=None, **_help("branch to push to (created if missing)"))
    token: str | None = field(
        default=None, **_help("Hub token (default: HF_TOKEN or the login cache); never printed")
    )
    format: str = field(
        default="diffusers", **_help(f"one of {', '.join(FORMATS)}; comfyui adds the original FLUX.2 layout")
    )
    out: str | None = field(default=None, **_help("where to write the folders (default: RUN/hub_export)"))
    examples: bool = field(
        default=True, **_help("render example images, without and with the LoRA (--no_examples to skip)")
    )
    dry_run: bool = field(
        default=False, **_help("write the folders and list what would be uploaded; send nothing")
    )

    def __post_init__(self) -> None:
        if not self.run:
            raise ValueError("name the run to export: tscale export RUN_DIR --repo-id namespace/name.")
        if not Path(self.run).is_dir():
            raise FileNotFoundError(
                f"RUN {self.run!r} does not exist; pass a run's --output_dir or a checkpoint dir."
            )
        if not self.repo_id:
            raise ValueError("--repo-id is required: pass --repo-id namespace/name (e.g. me/klein-cat-dpo).")
        check_repo_id(self.repo_id)
        if self.include_pairs:
            check_repo_id(self.include_pairs, "--include-pairs")
        if self.format not in FORMATS:
            raise ValueError(
                f"--format {self.format!r} is not one of {', '.join(FORMATS)}; pick one of those."
            )
        if self.out is not None and Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(
                f"--out {self.out!r} is an existing file; pass a directory for the export folders."
            )
        if not self.dry_run:
            resolve_token(self.token)  # no token: fail now, before any folder is built


def export_run(args: ExportArguments, *, api=None, pipe=None, log=print) -> list[PushResult]:
    """Build the adapter folder (and the pair dataset), then push them (or list them, with `dry_run`)."""
    from .adapter import build_adapter_folder, find_adapter

    try:
        source = find_adapter(args.run)
    except FileNotFoundError as error:  # name the setting: the run given as RUN (or --run)
        raise FileNotFoundError(
            f"RUN {args.run!r}: {str(error).rstrip('.')}; pass a run's --output_dir or one of its checkpoints."
        ) from error
    out = Path(args.out) if args.out else source.run_dir / "hub_export"
    check_exportable(source, args)
    folder = build_adapter_folder(
        source,
        out / "model",
        repo_id=args.repo_id,
        examples=args.examples,
        comfyui=args.format == "comfyui",
        pipe=pipe,
    )
    folders = [(folder, args.repo_id, "model")]
    if args.include_pairs:
        from .dataset import export_pair_dataset

        dataset = export_pair_dataset(
            source.run_dir,
            out / "pairs",
            repo_id=args.include_pairs,
            rounds=source.pair_rounds,
            manifest=source.pairs,
        )
        folders.append((dataset, args.include_pairs, "dataset"))
    results = []
    for path, repo_id, repo_type in folders:
        result = push_folder(
            path,
            repo_id,
            repo_type=repo_type,
            private=args.private,
            revision=args.revision,
            token=args.token,
            commit_message=f"tscale export of {source.run_dir.name} ({source.label})",
            dry_run=args.dry_run,
            api=api,
        )
        results.append(result)
        if args.dry_run:
            log(f"dry run: would upload {len(result.files)} files from {path} to {repo_type} repo {repo_id}:")
            for name in result.files:
                log(f"  {name} ({(path / name).stat().st_size} bytes)")
        else:
            log(f"pushed {len(result.files)} files to {repo_type} repo {repo_id}: {result.url}")
    return results


def check_exportable(source: AdapterSource, args: ExportArguments) -> None:
    """What the run's files alone show, checked before any folder is built or model loaded, so a bad run
    leaves an earlier export as it was: a LoRA file cut short, `--format comfyui` for a family without
    the original layout, and `--include-pairs` without pairs."""
    from ..loading import check_safetensors_file

    check_safetensors_file(
        source.lora_file,
        f"RUN {args.run!r}: the LoRA",
        fix="export one of its complete checkpoints instead (tscale export RUN/checkpoints/checkpoint-NNNNN), or copy the run again.",
    )
    if args.format == "comfyui":
        from .card import run_pipeline_class
        from .comfyui import comfyui_keys

        comfyui_keys(run_pipeline_class(source.run_dir))  # a family without the original layout: its error
    if args.include_pairs:
        from ..pairs import PairStore

        if not PairStore(source.run_dir / "pairs").rounds():
            raise ValueError(
                f"--include-pairs {args.include_pairs!r}: RUN {str(source.run_dir)!r} holds no complete pair shard; train "
                "for at least one round first, or drop --include-pairs."
            )
