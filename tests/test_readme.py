"""The README and the docs are true: their commands run as written, in their order, in a fresh copy of
the repository, and what a run writes respects the umask.

The documents are README.md, then every docs/*.md page in name order; they run in that order in one
copy, so a page may use what the README's commands made (`runs/demo`). The commands are every line of a
document's ```bash blocks (backslash continuations joined, comment lines dropped) and every `$ ` line
of its other blocks (transcripts, whose shown output is checked). A command that cannot run on a
CPU-only, offline machine is skipped only by one of `SKIP_RULES`, and `EXPECTED_SKIPS` lists exactly
what they skip, per document: a new command that a rule would skip fails the test until it is listed
here, so nothing runnable is skipped unnoticed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"


def documents() -> list[Path]:
    """README.md, then the docs pages in name order: the order their commands run in."""
    return [README, *sorted(DOCS.glob("*.md"))]


def _name(document: Path) -> str:
    return document.relative_to(REPO).as_posix()


# Fenced-block languages the README may use; a block in another one (```sh, ```console) fails the
# test rather than being ignored.
RUN_LANGUAGES = {"bash"}  # every line is a command
TRANSCRIPT_LANGUAGES = {""}  # `$ ` lines are commands, the lines after them their output
OTHER_LANGUAGES = {"python", "yaml"}  # not commands (the YAML keys are checked below)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Command:
    text: str  # as written, continuation lines joined
    line: int  # where it starts in its document (1-based)
    transcript: bool = False
    shown_output: list[str] = field(default_factory=list)  # the lines a transcript shows after it

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def short(self) -> str:
        return " ".join(self.text.split())


def readme_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced block."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), number + 1, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, "a document has an unclosed ``` block"
    return blocks


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    for language, first, lines in readme_blocks(text):
        if language in RUN_LANGUAGES:
            pending: Command | None = None
            for offset, line in enumerate(lines):
                if pending is None:
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    pending = Command(line.strip(), first + offset)
                else:
                    pending.text += " " + line.strip()
                if pending.text.endswith("\\"):
                    pending.text = pending.text[:-1].rstrip()
                else:
                    commands.append(pending)
                    pending = None
            assert pending is None, f"line {first}: a bash block ends on a continuation"
        elif language in TRANSCRIPT_LANGUAGES:
            for offset, line in enumerate(lines):
                if line.startswith("$ "):
                    commands.append(Command(line[2:].strip(), first + offset, transcript=True))
                elif (
                    commands
                    and commands[-1].transcript
                    and first <= commands[-1].line < first + len(lines)
                    and line.strip()
                ):
                    commands[-1].shown_output.append(line)
        else:
            assert language in OTHER_LANGUAGES, (
                f"line {first - 1}: a ```{language} block; make it ```bash (run by this test) or teach "
                "tests/test_readme.py what it is"
            )
    return commands


def _option(argv: list[str], name: str) -> str | None:
    for index, token in enumerate(argv):
        if token == name and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def _loads_a_hub_model(argv: list[str], root: Path) -> bool:
    if argv[:2] == ["tscale", "plan"]:
        return False  # builds fake tensors from bundled configs: no weights, no download
    model = _option(argv, "--model")
    config = _option(argv, "--config")
    if model is None and config is not None and (root / config).is_file():
        model = (yaml.safe_load((root / config).read_text()) or {}).get("model")
    return model is not None and HUB_ID.fullmatch(str(model)) is not None and not (root / str(model)).exists()


def _launches_on_gpus(argv: list[str]) -> bool:
    if argv[:2] == ["accelerate", "launch"]:
        return not any(token.startswith("accelerate_configs/cpu/") for token in argv)
    gpu_scripts = ("bench/gpu_klein.py", "bench/gpu_quantized.py")
    return any(script in argv for script in gpu_scripts) and "--tiny" not in argv


# name -> whether a command (its argv, the checkout) is one the rule skips; the first rule that matches names it.
SKIP_RULES: dict[str, Callable[[list[str], Path], bool]] = {
    "whole suite": lambda argv, root: argv == ["make", "test"],  # the suite holds this test
    "install": lambda argv, root: (
        argv[:2] == ["pip", "install"]
    ),  # would install the copy into the test's .venv
    "synopsis": lambda argv, root: any(
        "..." in token or token.startswith("[") or "$" in token for token in argv
    ),
    "GPU": lambda argv, root: _launches_on_gpus(argv),
    "Hub model": _loads_a_hub_model,
}


def skip_rule(command: Command, root: Path) -> str | None:
    argv = command.argv
    return next((name for name, applies in SKIP_RULES.items() if applies(argv, root)), None)


# What the rules skip, per document in its order: (the command's start, the rule).
EXPECTED_SKIPS: dict[str, list[tuple[str, str]]] = {
    "README.md": [
        ("pip install -e .", "install"),
        ("make test", "whole suite"),
        ("tscale ses --model black-forest-labs/FLUX.2-klein-4B --prompt", "Hub model"),
        ("accelerate launch --config_file accelerate_configs/multi_gpu.yaml", "GPU"),
    ],
    "docs/benchmarks.md": [
        ("python bench/gpu_klein.py # on a GPU machine", "GPU"),
        ("python bench/gpu_quantized.py --size 9b # on a GPU machine", "GPU"),
    ],
    "docs/export.md": [
        ("tscale export runs/cat --repo-id me/klein-cat-dpo [--private]", "synopsis"),
    ],
    "docs/multi-node.md": [
        ("accelerate launch --config_file accelerate_configs/multi_node.yaml", "synopsis"),
    ],
    "docs/search.md": [
        ("pip install -e .", "install"),
        ("tscale ses --model black-forest-labs/FLUX.2-klein-4B --prompt", "Hub model"),
        ("accelerate launch --num_processes 4 -m tscale_train.cli ses --model ...", "synopsis"),
        ("accelerate launch --num_processes 8 -m tscale_train.cli ses --model ...", "synopsis"),
    ],
    "docs/shapes.md": [
        ("python scripts/train_shapes_model.py [--max-minutes M]", "synopsis"),
        ("python -m tscale_train.shapes.card [--pipeline DIR]", "synopsis"),
    ],
    "docs/training.md": [
        ("accelerate launch --config_file accelerate_configs/multi_gpu.yaml", "GPU"),
        (
            "accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml recipes/flux2_klein_dpo.py ...",
            "synopsis",
        ),
        ('tscale ses --model black-forest-labs/FLUX.2-klein-4B --lora runs/cat --prompt "..."', "synopsis"),
    ],
}


@pytest.mark.parametrize("document", documents(), ids=_name)
def test_the_readme_skips_exactly_what_its_rules_name(document):
    expected = EXPECTED_SKIPS.get(_name(document), [])
    skipped = [
        (command, rule)
        for command in readme_commands(document.read_text())
        if (rule := skip_rule(command, REPO))
    ]
    assert len(skipped) == len(expected) and all(
        command.short.startswith(start) and rule == wanted
        for (command, rule), (start, wanted) in zip(skipped, expected, strict=True)
    ), f"{_name(document)} commands skipped (line, rule, command):\n" + "\n".join(
        f"  {command.line}: {rule}: {command.short}" for command, rule in skipped
    )


def test_expected_skips_name_existing_documents():
    names = {_name(document) for document in documents()}
    assert set(EXPECTED_SKIPS) <= names, sorted(set(EXPECTED_SKIPS) - names)


def test_the_readme_yaml_keys_are_training_fields():
    import dataclasses

    from tscale_train.config import OnlineDPOConfig

    fields = {item.name for item in dataclasses.fields(OnlineDPOConfig)}
    for document in documents():
        for language, first, lines in readme_blocks(document.read_text()):
            if language == "yaml":
                unknown = set(yaml.safe_load("\n".join(lines))) - fields
                assert not unknown, (
                    f"{_name(document)} line {first}: {sorted(unknown)} are not OnlineDPOConfig fields"
                )


def _help(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tscale_train.cli", *argv, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _flag_names(text: str) -> set[str]:
    return {flag.replace("-", "_").lstrip("_") for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", text)}


@pytest.mark.slow
def test_the_readme_ses_options_and_export_synopsis_are_the_clis():
    table = (DOCS / "search.md").read_text().split("| option | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = _flag_names("\n".join(row.split("|")[1] for row in table.splitlines()[2:]))
    assert documented >= {"model", "lora", "prompt", "budget", "out", "compare"}
    missing = documented - _flag_names(_help("ses"))
    assert not missing, (
        f"docs/search.md's `tscale ses` options that `tscale ses --help` lacks: {sorted(missing)}"
    )

    synopsis = next(
        c
        for c in readme_commands((DOCS / "export.md").read_text())
        if c.short.startswith("tscale export runs/cat")
    )
    export_help = _help("export")
    missing = _flag_names(synopsis.text) - _flag_names(export_help)
    assert not missing, (
        f"docs/export.md's `tscale export` options that `tscale export --help` lacks: {sorted(missing)}"
    )
    # `tscale export runs/cat ...`: the run is a positional argument, and --help must show it.
    assert re.search(r"^positional arguments:\n +\S", export_help, re.MULTILINE), (
        "`tscale export --help` shows no positional argument:\n" + export_help
    )


# ---- running them ----------------------------------------------------------------------------------
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _shown_line_matches(shown: str, output_lines: list[str]) -> bool:
    """`shown` appears in one of `output_lines`, whitespace runs alike and each number within one unit
    of its last shown digit (float sums may differ in the last bit between CPUs)."""
    parts = _NUMBER.split(shown.strip())
    numbers = _NUMBER.findall(shown.strip())
    pattern = "".join(
        r"\s+".join(re.escape(word) for word in re.split(r"\s+", part))
        + ("(" + _NUMBER.pattern + ")" if index < len(numbers) else "")
        for index, part in enumerate(parts)
    )
    for line in output_lines:
        for match in re.finditer(pattern, line):
            if all(
                (got == want)
                if "." not in want
                else abs(float(got) - float(want)) <= 10 ** -len(want.split(".")[1]) + 1e-9
                for got, want in zip(match.groups(), numbers, strict=True)
            ):
                return True
    return False


def _expected_status(command: Command) -> int:
    # `tscale plan`: "the exit code is 0 when it fits".
    return 1 if any(re.search(r"fits an? .* card: no", line) for line in command.shown_output) else 0


def _copy_checkout(destination: Path) -> None:
    """What a clone of the working tree holds: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    )
    for name in listed.stdout.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():  # a tracked file deleted in the working tree is not there
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh copy of the repository whose `.venv` is the environment running the tests.

    `make demo` depends on `install`, which rebuilds `.venv/bin/tscale` when `pyproject.toml` is
    newer: the copy's `pyproject.toml` is dated before the environment's `tscale`, and the test refuses
    to run if make would still rebuild (that would reinstall the shared environment from the copy).
    """
    if shutil.which("git") is None or shutil.which("make") is None or not (REPO / ".git").exists():
        pytest.skip("needs git, make and a git checkout")
    environment = Path(sys.prefix)
    tscale = environment / "bin" / "tscale"
    if not tscale.is_file():
        pytest.skip(f"no tscale in {environment}: the tests do not run in the project's environment")
    root = tmp_path_factory.mktemp("readme") / "tscale-train"
    _copy_checkout(root)
    (root / ".venv").symlink_to(environment, target_is_directory=True)
    installed = tscale.stat().st_mtime
    os.utime(root / "pyproject.toml", (installed - 60, installed - 60))
    up_to_date = subprocess.run(
        ["make", "-q", "install"], cwd=root, env=_environment(root), capture_output=True, text=True
    )
    assert up_to_date.returncode == 0, (
        f"make would rebuild .venv in the copy:\n{up_to_date.stdout}{up_to_date.stderr}"
    )
    return root


def _environment(root: Path) -> dict[str, str]:
    """A fresh machine's: the copy's code first on the path, the tiny kit built into the copy (the
    Makefile's default), an empty Hugging Face cache, offline."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "MAKE", "MFLAGS"))
        and key not in {"TSCALE_TINY_DIR", "HF_HOME", "PYTHONPATH"}
    }
    env.update(
        PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(root),
        TSCALE_TINY_DIR=str(root / ".tiny_models"),
        HF_HOME=str(root / ".hf_home"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return env


def _tree(root: Path) -> dict[Path, os.stat_result]:
    """Every path under `root` but the `.venv` link, with its lstat (links are not followed)."""
    tree = {}
    for directory, directories, files in os.walk(root):
        for name in [*directories, *files]:
            path = Path(directory, name)
            if path != root / ".venv":
                tree[path] = path.lstat()
    return tree


def _run_command(command: Command, checkout: Path, env: dict[str, str]) -> str | None:
    """Run one command in the copy; None when it did what its document says, else what went wrong."""
    try:
        done = subprocess.run(
            ["bash", "-c", command.text],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            umask=0o022,
        )
    except subprocess.TimeoutExpired:
        return " ran past 30 minutes"
    output = done.stdout + done.stderr
    problems = []
    if done.returncode != _expected_status(command):
        problems.append(f"exit status {done.returncode}, expected {_expected_status(command)}")
    output_lines = re.split(r"[\r\n]+", output)
    for shown in command.shown_output:
        if "%|" in shown:
            continue  # a progress bar: its timings are the machine's
        if not _shown_line_matches(shown, output_lines):
            problems.append(f"the document shows {shown.strip()!r}; the command did not print it")
    if not problems:
        return None
    return (
        ": "
        + "; ".join(problems)
        + "\n    output ends with:\n"
        + "\n".join("      " + line for line in output[-3000:].splitlines())
    )


@pytest.mark.slow
def test_the_readme_commands_run_as_written(checkout):
    """Every command the rules leave, the README's then each docs page's, in order; one failure does not stop
    the ones after it, and the test reports them all. Under umask 022, everything they write is 0644
    (directories 0755)."""
    env = _environment(checkout)
    before = _tree(checkout)
    failures: list[str] = []
    ran = 0
    for document in documents():
        for command in readme_commands(document.read_text()):
            if skip_rule(command, checkout):
                continue
            ran += 1
            failure = _run_command(command, checkout, env)
            if failure:
                failures.append(f"{_name(document)} line {command.line}: `{command.short}`{failure}")
    assert ran >= 10

    written = {
        path: stat
        for path, stat in _tree(checkout).items()
        if path not in before or before[path].st_mtime_ns != stat.st_mtime_ns
    }
    wrong_modes = sorted(
        f"{oct(stat.st_mode & 0o777)} {path.relative_to(checkout)}"
        for path, stat in written.items()
        if not path.is_symlink() and stat.st_mode & 0o777 != (0o755 if path.is_dir() else 0o644)
    )
    if wrong_modes:
        failures.append(
            "written under umask 022 without modes 0644 / 0755:\n"
            + "\n".join("  " + item for item in wrong_modes)
        )
    assert not failures, "\n\n".join(failures)


# ---- a run's files and the umask ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_everything_a_run_writes_respects_the_umask(umask, tmp_path, kit_dir):
    """A guarded training run with EMA and checkpoints, its export (ComfyUI file, pair dataset), a tiny kit
    and a search with the run's LoRA: every file gets 0o666 & ~umask and every directory 0o777 & ~umask, the LoRA
    safetensors included (safetensors >= 0.8 writes 0600 whatever the umask), and nothing is forced
    open under a strict umask."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"

    def tscale(*argv: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "tscale_train.cli", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
            umask=umask,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    tscale(
        "train",
        "--model",
        "tiny",
        "--dtype",
        "float32",
        "--reward",
        "rewards.synthetic:brightness",
        "--budget",
        "4",
        "--popsize",
        "2",
        "--k_elites",
        "2",
        "--rounds",
        "2",
        "--prompts_per_round",
        "4",
        "--epochs_per_round",
        "2",
        "--train_batch_size",
        "2",
        "--lora_rank",
        "4",
        "--eval_every",
        "1",
        "--eval_ses_every",
        "0",
        "--eval_budget",
        "2",
        "--max_eval_prompts",
        "4",
        "--checkpoint_every",
        "1",
        "--guard_policy",
        "stop",
        "--guard_diversity_seeds",
        "2",
        "--guard_tolerance",
        "0.99",
        "--ema_decay",
        "0.5",
        "--output_dir",
        str(run),
        "--no_progress",
    )
    tscale(
        "export",
        str(run),
        "--repo-id",
        "me/umask-check",
        "--include-pairs",
        "me/umask-check-pairs",
        "--format",
        "comfyui",
        "--dry-run",
    )
    tscale(
        "tiny", "--out", str(tmp_path / "kit")
    )  # save_pretrained's safetensors files, mkdtemp's directories
    tscale(
        "ses",
        "--model",
        "tiny",
        "--lora",
        str(run),
        "--prompt",
        "a cat",
        "--budget",
        "4",
        "--popsize",
        "2",
        "--k-elites",
        "1",
        "--save-trace",
        "--out",
        str(tmp_path / "ses" / "cat.png"),
        "--no-progress",
    )

    expected = {"file": 0o666 & ~umask, "dir": 0o777 & ~umask}
    paths = [path for root in (run, tmp_path / "ses", tmp_path / "kit") for path in [root, *root.rglob("*")]]
    names = {path.name for path in paths}
    must_exist = {
        "pytorch_lora_weights.safetensors",
        "pytorch_lora_weights_comfyui.safetensors",
        "ema.safetensors",
        "metrics.jsonl",
        "cat.png",
        "cat_trace.json",
        "diffusion_pytorch_model.safetensors",
    }
    assert must_exist <= names, sorted(must_exist - names)
    loras = [path for path in paths if path.name == "pytorch_lora_weights.safetensors"]
    places = {str(path.parent.relative_to(run)).split("/")[0] for path in loras}
    assert {".", "checkpoints", "guard", "hub_export"} <= places, places
    assert any("pairs" in path.parts for path in paths if path.suffix == ".arrow")
    wrong = sorted(
        f"{oct(path.lstat().st_mode & 0o777)} {path}"
        for path in paths
        if not path.is_symlink()
        and path.lstat().st_mode & 0o777 != expected["dir" if path.is_dir() else "file"]
    )
    assert not wrong, (
        f"under umask {oct(umask)}, expected {oct(expected['file'])} / {oct(expected['dir'])}:\n"
        + "\n".join(wrong)
    )


def test_save_lora_and_respect_umask_follow_the_umask(tmp_path, tiny_pipe):
    """The fast check: `save_lora` (through safetensors' 0600 temporary file) and `respect_umask`, which
    the writers of owner-only files call."""
    import copy

    from tscale_train.io_utils import respect_umask
    from tscale_train.lora import add_lora, save_lora

    transformer = copy.deepcopy(tiny_pipe.transformer)
    add_lora(transformer, rank=2)
    for umask in (0o022, 0o027, 0o077):
        old = os.umask(umask)
        try:
            path = save_lora(type(tiny_pipe), transformer, tmp_path / oct(umask))
            private = tmp_path / f"private-{oct(umask)}"
            private.mkdir(mode=0o700)
            (private / "weights").write_bytes(b"")
            os.chmod(private / "weights", 0o600)
            respect_umask(private)
        finally:
            os.umask(old)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        assert (private / "weights").stat().st_mode & 0o777 == 0o666 & ~umask
        assert private.stat().st_mode & 0o777 == 0o777 & ~umask
