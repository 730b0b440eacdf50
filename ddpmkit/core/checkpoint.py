"""Checkpoints as safetensors: tensors plus string metadata, written atomically, never pickled."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ddpmkit.core.errors import DdpmkitError

FORMAT = "ddpmkit-checkpoint"
FORMAT_VERSION = "1"
WEIGHTS_FILE = "model.safetensors"
"""Where a stage's training loop writes the network it trained, in the stage's folder."""

_STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-encoded ``metadata`` to ``path`` atomically.

    The file is written beside its destination, flushed to disk and renamed over it, so a crash
    mid-write leaves any earlier file at ``path`` intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION}
    meta.update({key: json.dumps(value) for key, value in metadata.items()})
    # safetensors needs contiguous tensors that share no storage
    plain = {key: t.detach().to("cpu").contiguous().clone() for key, t in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(plain, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, read-only: the earlier checkpoints stay as they were
        tmp.unlink(missing_ok=True)
        raise DdpmkitError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuses anything else.

    Nothing is ever unpickled: a pickled PyTorch file (``torch.save``) is refused by name.
    """
    refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DdpmkitError(
            f"{path}: not a readable ddpmkit checkpoint (safetensors expected; pickled files "
            f"are never loaded): {exc}"
        ) from exc
    if raw_meta.get("format") != FORMAT:
        raise DdpmkitError(f"{path}: safetensors file without ddpmkit checkpoint metadata")
    meta = {
        key: json.loads(value)
        for key, value in raw_meta.items()
        if key not in {"format", "format_version"}
    }
    return tensors, meta


def refuse_pickle(path: Path) -> None:
    """Raise :class:`DdpmkitError` if ``path`` holds a pickled (``torch.save``) file.

    Unpickling runs code chosen by whoever wrote the file, so ddpmkit never does it; legacy
    ``.pt`` weights must be converted to safetensors by their owner (``torch.load`` with
    ``weights_only=True``, then :func:`safetensors.torch.save_file`).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return  # the reader reports a missing or unreadable file with its reason
    if head[8:9] == b"{":
        return  # safetensors: an 8-byte header length, then the JSON header
    zipped = head.startswith(b"PK\x03\x04")  # torch.save's default zip archive
    pickled = head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}
    if zipped or pickled:
        raise DdpmkitError(
            f"{path}: a pickled PyTorch file (torch.save), refused: loading it could run "
            "arbitrary code. ddpmkit checkpoints are safetensors; convert trusted weights with "
            "torch.load(path, weights_only=True) and safetensors.torch.save_file"
        )


def checkpoint_path(directory: Path, step: int) -> Path:
    """``directory/step-NNNNNNN.safetensors``."""
    return directory / f"step-{step:07d}.safetensors"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as ``(step, path)``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent checkpoints."""
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)


def network_metadata(folder: Path, *, what: str) -> dict[str, Any]:
    """The ``metadata`` a stage saved with the weights in ``folder`` (with
    ``steps``): what a user of the weights needs to rebuild the network before
    :func:`load_network`; ``what`` names the user in the error of a missing file."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise DdpmkitError(f"{what}: {path} does not exist (has its stage run?)")
    return load_checkpoint(path)[1]


def load_network(network: torch.nn.Module, folder: Path, *, what: str) -> torch.nn.Module:
    """Load the weights a stage saved in ``folder`` into ``network`` (eval mode,
    no gradients); ``what`` names the user of the weights in the error of a missing or
    mismatched file."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise DdpmkitError(f"{what}: {path} does not exist (has its stage run?)")
    tensors, _ = load_checkpoint(path)
    try:
        network.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DdpmkitError(f"{what}: {path} does not fit the network: {first}") from exc
    network.requires_grad_(False)
    return network.eval()
