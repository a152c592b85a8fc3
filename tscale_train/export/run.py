"""`tscale export`: a run's adapter (and optionally its pairs) to the Hub, and the same at the end of training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .hub import PushResult, check_repo_id, push_folder, resolve_token

FORMATS = ("diffusers", "comfyui")


def _help(text: str) -> dict:
    return {"metadata": {"help": text}}


@dataclass
class ExportArguments:
    """What `tscale export RUN --repo-id ID ...` takes."""

    run: str | None = field(default=None, **_help("a run's --output_dir (finished or still training) or a checkpoint dir"))
    repo_id: str | None = field(default=None, **_help("model repo to push the adapter to, namespace/name"))
    include_pairs: str | None = field(default=None, **_help("also push the run's pairs to this dataset repo"))
    private: bool = field(default=False, **_help("create the repos private"))
    revision: str | None = field(default=None, **_help("branch to push to (created if missing)"))
    token: str | None = field(default=None, **_help("Hub token (default: HF_TOKEN or the login cache); never printed"))
    format: str = field(default="diffusers", **_help(f"one of {', '.join(FORMATS)}; comfyui adds the original FLUX.2 layout"))
    out: str | None = field(default=None, **_help("where to write the folders (default: RUN/hub_export)"))
    examples: bool = field(default=True, **_help("render example images, without and with the LoRA (--no_examples to skip)"))
    dry_run: bool = field(default=False, **_help("write the folders and list what would be uploaded; send nothing"))

    def __post_init__(self) -> None:
        if not self.run:
            raise ValueError("name the run to export: tscale export RUN_DIR --repo-id namespace/name.")
        if not Path(self.run).is_dir():
            raise FileNotFoundError(f"run {self.run!r} does not exist; pass a run's --output_dir or a checkpoint dir.")
        if not self.repo_id:
            raise ValueError("--repo-id is required (namespace/name).")
        check_repo_id(self.repo_id)
        if self.include_pairs:
            check_repo_id(self.include_pairs, "--include-pairs")
        if self.format not in FORMATS:
            raise ValueError(f"--format {self.format!r} is not one of {', '.join(FORMATS)}.")
        if not self.dry_run:
            resolve_token(self.token)  # no token: fail now, before any folder is built


def export_run(args: ExportArguments, *, api=None, pipe=None, log=print) -> list[PushResult]:
    """Build the adapter folder (and the pair dataset), then push them (or list them, with `dry_run`)."""
    from .adapter import build_adapter_folder, find_adapter

    source = find_adapter(args.run)
    out = Path(args.out) if args.out else source.run_dir / "hub_export"
    folder = build_adapter_folder(
        source, out / "model", repo_id=args.repo_id, examples=args.examples, comfyui=args.format == "comfyui", pipe=pipe
    )
    folders = [(folder, args.repo_id, "model")]
    if args.include_pairs:
        from .dataset import export_pair_dataset

        folders.append((export_pair_dataset(source.run_dir, out / "pairs", repo_id=args.include_pairs), args.include_pairs, "dataset"))
    results = []
    for path, repo_id, repo_type in folders:
        result = push_folder(
            path, repo_id, repo_type=repo_type, private=args.private, revision=args.revision, token=args.token,
            commit_message=f"tscale export of {source.run_dir.name} ({source.label})", dry_run=args.dry_run, api=api,
        )
        results.append(result)
        if args.dry_run:
            log(f"dry run: would upload {len(result.files)} files from {path} to {repo_type} repo {repo_id}:")
            for name in result.files:
                log(f"  {name} ({(path / name).stat().st_size} bytes)")
        else:
            log(f"pushed {len(result.files)} files to {repo_type} repo {repo_id}: {result.url}")
    return results
