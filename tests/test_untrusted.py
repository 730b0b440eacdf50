"""Untrusted files: nothing unpickles, checkpoints refuse a different model, pipeline files
name registered components only, and run folders stay inside ``output.dir``."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpmkit.app.cli import main
from ddpmkit.app.fingerprint import config_hash, differences
from ddpmkit.core.checkpoint import load_checkpoint
from ddpmkit.core.errors import DdpmkitError

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


@pytest.mark.parametrize("zipped", [True, False])
def test_a_pickled_checkpoint_is_refused_and_never_runs(
    pipeline_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], zipped: bool
) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    state = {"model.weight": torch.zeros(2), "payload": Payload(marker)}
    torch.save(state, evil, _use_new_zipfile_serialization=zipped)
    with pytest.raises(DdpmkitError, match="pickled PyTorch file"):
        load_checkpoint(evil)
    assert main(["run", str(pipeline_file), "--quiet", "--set", "train.steps=1"]) == 0
    args = ["eval", str(pipeline_file), "--quiet", "--checkpoint", str(evil)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pickled PyTorch file (torch.save), refused" in err and "weights_only=True" in err
    assert not marker.exists()


def test_a_safetensors_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    # a header length of 128 makes the first byte 0x80, like a pickle's: still safetensors
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(DdpmkitError, match="without ddpmkit checkpoint metadata"):
        load_checkpoint(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 5)
    with pytest.raises(DdpmkitError, match="not a readable ddpmkit checkpoint"):
        load_checkpoint(junk)


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def test_no_code_path_unpickles() -> None:
    """Every source file of ddpmkit and its bundled plugins: no pickle/marshal/shelve import,
    and every torch.load passes weights_only=True."""
    sources = [*ROOT.joinpath("ddpmkit").rglob("*.py"), *ROOT.joinpath("plugins").rglob("*.py")]
    assert len(sources) > 20
    for source in sources:
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                module = getattr(node, "module", None) or ""
                for name in [module, *names]:
                    assert name.split(".")[0] not in {"pickle", "marshal", "shelve", "dill"}, (
                        f"{source}: imports {name}"
                    )
        for call in _calls(tree):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "load":
                owner = ast.unparse(func.value)
                if owner == "torch":
                    flags = {k.arg: ast.unparse(k.value) for k in call.keywords}
                    assert flags.get("weights_only") == "True", f"{source}: {ast.unparse(call)}"


def test_the_config_hash_covers_the_model_sections_only() -> None:
    base = {
        "schedule": {"type": "linear", "timesteps": 40},
        "parameterization": {"type": "v"},
        "denoiser": {"type": "unet", "base_channels": 8},
        "train": {"steps": 6},
    }
    longer = {**base, "train": {"steps": 60}}
    assert config_hash(base) == config_hash(longer)
    other = {**base, "schedule": {"type": "linear", "timesteps": 50}}
    assert config_hash(base) != config_hash(other)
    assert differences(base, other) == ["schedule.timesteps: checkpoint 40, this pipeline 50"]
    assert differences({"a": 1}, {"b": 1}) == [
        "a: checkpoint 1, this pipeline absent",
        "b: checkpoint absent, this pipeline 1",
    ]


def test_resume_refuses_a_checkpoint_of_a_different_model(
    pipeline_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same tensor shapes, different meaning: v- and eps-prediction share every weight shape,
    so only the recorded config hash can tell them apart."""
    assert main(["run", str(pipeline_file), "--quiet", "--set", "train.steps=2"]) == 0
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "step-0000002.safetensors"
    _, meta = load_checkpoint(checkpoint)
    assert meta["config_hash"] == config_hash(meta["config"])
    capsys.readouterr()
    eps = ["--set", "parameterization.type='eps'"]
    assert main(["run", str(pipeline_file), "--quiet", "--resume", *eps]) == 2
    err = capsys.readouterr().err
    assert "refusing to load a checkpoint of a different model" in err
    assert "parameterization.type: checkpoint 'v', this pipeline 'eps'" in err
    args = ["eval", str(pipeline_file), "--quiet", "--set", "schedule.timesteps=50"]
    assert main(args) == 2
    assert "schedule.timesteps: checkpoint 40, this pipeline 50" in capsys.readouterr().err
    # a longer run of the same model resumes
    longer = ["--resume", "--set", "train.steps=3"]
    assert main(["run", str(pipeline_file), "--quiet", *longer]) == 0


def test_an_edited_config_hash_is_refused(pipeline_file: Path, tmp_path: Path) -> None:
    from ddpmkit.app.pipeline import load_model_from_checkpoint

    assert main(["run", str(pipeline_file), "--quiet", "--set", "train.steps=1"]) == 0
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "step-0000001.safetensors"
    tensors, meta = load_checkpoint(checkpoint)
    meta["config_hash"] = "0" * 64
    forged = tmp_path / "forged.safetensors"
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    save_file(tensors, str(forged), metadata={"format": "ddpmkit-checkpoint", **metadata})
    with pytest.raises(DdpmkitError, match="config_hash: checkpoint 0000"):
        load_model_from_checkpoint(forged)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('type = "ddim"', 'type = "os:system"'), "no sampler named 'os:system'"),
        (('type = "shapes"', 'type = "ddpmkit_datasets:ShapesDataset"'), "no dataset named"),
        (('type = "unet"', 'type = "torch.nn.Linear"'), "no denoiser named 'torch.nn.Linear'"),
        (('name = "tiny"', 'name = "../escape"'), "output.name: output.name must be a plain"),
        (('name = "tiny"', 'name = ".."'), "output.name must be a plain folder name"),
    ],
)
def test_a_pipeline_file_cannot_import_code_or_escape_its_folder(
    write_pipeline: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    edit: tuple[str, str],
    expected: str,
) -> None:
    path = write_pipeline(edit)
    assert main(["validate", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_run_folders_are_replaced_only_when_asked(
    pipeline_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = ["run", str(pipeline_file), "--quiet", "--set", "train.steps=1"]
    assert main(one) == 0
    assert main(one) == 0  # a second run goes to tiny-2
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["tiny", "tiny-2"]
    two = ["run", str(pipeline_file), "--quiet", "--set", "train.steps=2", "--overwrite"]
    assert main(two) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["tiny", "tiny-2"]
    assert sorted(p.name for p in (runs / "tiny" / "checkpoints").iterdir()) == [
        "step-0000002.safetensors"
    ]
    # a folder that is not a run folder is never deleted
    precious = tmp_path / "runs" / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    args = [*two, "--set", "output.name='thesis'"]
    assert main(args) == 2
    assert "not a ddpmkit run folder" in capsys.readouterr().err
    assert (precious / "chapter1.tex").read_text() == "years of work"
    assert main([*two, "--resume"]) == 2
    assert "pick one" in capsys.readouterr().err


def test_resume_refuses_another_stateful_weighting_but_not_a_stateless_one(
    write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The importance weighting keeps a loss history in the checkpoint: resuming with another
    history length would load the wrong state. Adding a stateless weighting is fine."""
    path = write_pipeline(
        (
            "[train]",
            "[variance]\ntype = 'fixed-small'\n\n[train.weighting]\ntype = 'importance'\n\n[train]",
        )
    )
    assert main(["run", str(path), "--quiet", "--set", "train.steps=2"]) == 0
    capsys.readouterr()
    longer = ["run", str(path), "--quiet", "--resume", "--set", "train.steps=3"]
    assert main([*longer, "--set", "train.weighting.history=20"]) == 2
    err = capsys.readouterr().err
    assert "refusing to resume with a different training objective or weighting" in err
    assert "train.weighting.history: checkpoint 10, this pipeline 20" in err
    plain = write_pipeline(name="plain.toml")
    assert main(["run", str(plain), "--quiet", "--set", "train.steps=2"]) == 0
    p2 = ["--set", "train.weighting.type='p2'"]
    assert main(["run", str(plain), "--quiet", "--resume", "--set", "train.steps=3", *p2]) == 0
