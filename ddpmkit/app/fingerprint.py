"""The config hash a checkpoint records: which model its weights belong to, and what differs.

A network's weights mean something only together with the schedule that noised its inputs, the
parameterization that reads its output and the denoiser's architecture. Those resolved sections
are hashed into every checkpoint; loading the checkpoint into a pipeline whose sections hash
differently is refused with the list of keys that differ. Everything else (training length,
learning rate, sampler, the reverse variance evaluated) may change between runs of one network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ddpmkit.core.errors import DdpmkitError

MODEL_SECTIONS = ("schedule", "parameterization", "denoiser")
"""The resolved config sections the weights depend on."""


def model_sections(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config the weights depend on."""
    return {key: resolved[key] for key in MODEL_SECTIONS if key in resolved}


def config_hash(resolved: Mapping[str, Any]) -> str:
    """SHA-256 of the model sections of a resolved config, as canonical JSON."""
    text = json.dumps(model_sections(resolved), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key.path: checkpoint X, this pipeline Y`` for every leaf where ``old`` and ``new``
    differ (a key missing on one side shows as ``absent``)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            missing = "absent"
            lines += differences(old.get(key, missing), new.get(key, missing), path)
        return lines
    if old == new:
        return []
    show = [v if v == "absent" else repr(v) for v in (old, new)]
    return [f"{prefix or '(config)'}: checkpoint {show[0]}, this pipeline {show[1]}"]


def check_checkpoint_fits(path: Path, meta: Mapping[str, Any], resolved: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose recorded config hash differs from ``resolved``'s.

    A checkpoint without a hash (written before hashes were recorded) passes here; loading its
    state dict still catches every shape mismatch.
    """
    recorded = meta.get("config_hash")
    if recorded is None or recorded == config_hash(resolved):
        return
    stored = meta.get("config")
    lines = (
        differences(model_sections(stored), model_sections(resolved))
        if isinstance(stored, Mapping)
        else []
    )
    if not lines:  # the metadata was edited: the hash no longer matches the config beside it
        lines = [f"config_hash: checkpoint {recorded}, this pipeline {config_hash(resolved)}"]
    raise DdpmkitError(
        f"{path}: refusing to load a checkpoint of a different model; it differs from this "
        "pipeline in:\n  " + "\n  ".join(lines)
    )


def check_resume_fits(
    path: Path,
    meta: Mapping[str, Any],
    resolved: Mapping[str, Any],
    stateful: Iterable[str] = (),
) -> None:
    """:func:`check_checkpoint_fits`, and for resuming also the ``[train.<key>]`` components
    named in ``stateful`` (those with state of their own, a discriminator or a loss history):
    continuing with another one would load the wrong state."""
    check_checkpoint_fits(path, meta, resolved)
    stored = meta.get("config")
    if not isinstance(stored, Mapping):
        return
    old, new = stored.get("train") or {}, resolved.get("train") or {}
    lines = []
    for key in stateful:
        lines += differences(old.get(key, "absent"), new.get(key, "absent"), f"train.{key}")
    if lines:
        raise DdpmkitError(
            f"{path}: refusing to resume with a different training objective or weighting; "
            "it differs from this pipeline in:\n  " + "\n  ".join(lines)
        )
