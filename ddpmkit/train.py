"""Training (Ho et al. 2020, Algorithm 1): AdamW, warm-up, clipping, EMA, checkpoints."""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ddpmkit.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from ddpmkit.config import TrainConfig
from ddpmkit.errors import DdpmkitError
from ddpmkit.fingerprint import check_resume_fits
from ddpmkit.interfaces import Conditioning, Dataset, LossWeighting, TrainingObjective
from ddpmkit.model import DiffusionModel


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def current_decay(self) -> float:
        """The decay used by the next update: min(decay, (1 + n) / (10 + n)) with warm-up."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * current, for floating tensors; copy the rest."""
        d = self.current_decay()
        for key, value in module.state_dict().items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadow.lerp_(value.detach(), 1.0 - d)
            else:
                shadow.copy_(value)
        self.updates += 1

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module``."""
        module.load_state_dict(self.shadow)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The example indices of training step ``step``: a fresh permutation per epoch.

    A pure function of ``(seed, step)``, so a resumed run sees exactly the data order of an
    uninterrupted one.
    """
    out: list[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, num_examples)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(num_examples, generator=gen)
        take = min(batch_size - len(out), num_examples - offset)
        out.extend(perm[offset : offset + take].tolist())
        position += take
    return out


MetricsCallback = Callable[[int, dict[str, Any]], None]
CheckpointCallback = Callable[[int, Path], None]


class Trainer:
    """Trains a :class:`DiffusionModel` on a :class:`Dataset` with L_simple.

    ``train()`` runs from the current step to ``config.steps``; with a ``checkpoint_dir`` it
    saves every ``checkpoint_every`` steps and at the end, and :meth:`resume` restores the
    weights, EMA, optimizer and random state from the newest checkpoint there.
    """

    def __init__(
        self,
        model: DiffusionModel,
        dataset: Dataset,
        config: TrainConfig,
        *,
        seed: int = 0,
        checkpoint_dir: Path | None = None,
        checkpoint_metadata: dict[str, Any] | None = None,
        on_metrics: MetricsCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        weighting: LossWeighting | None = None,
        objective: TrainingObjective | None = None,
        condition_dropout: float = 0.0,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.config = config
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_metadata = checkpoint_metadata or {}
        self.on_metrics = on_metrics
        self.on_checkpoint = on_checkpoint
        self.weighting = weighting
        self.objective = objective
        self.condition_dropout = condition_dropout
        self.progress = progress
        self.device = model.alphas_cumprod.device
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=config.lr,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
        )
        self.ema = EMA(model, config.ema_decay, config.ema_warmup)
        self.noise = torch.Generator().manual_seed(seed + 1)
        if objective is not None:
            objective.setup(model, tuple(dataset.shape))
        self.step = 0

    # -- the loop ----------------------------------------------------------------------------

    def batches(self) -> Iterator[tuple[torch.Tensor, Any]]:
        """Training images for each remaining step, on the model's device, and their raw
        conditions (``None`` for an unconditional model)."""
        conditioner = self.model.conditioner
        for step in range(self.step, self.config.steps):
            indices = batch_indices(len(self.dataset), self.config.batch_size, step, self.seed)
            batch = self.dataset.batch(indices)
            raw = conditioner.raw_from_batch(batch) if conditioner is not None else None
            yield batch.images.to(self.device, non_blocking=True), raw

    def condition(self, raw: Any, batch_size: int) -> Conditioning | None:
        """Encode ``raw`` and replace each example's condition by the null one with
        probability ``condition_dropout`` (Ho & Salimans 2021, Algorithm 1)."""
        conditioner = self.model.conditioner
        if conditioner is None or raw is None:
            return None
        cond = self.model.encode(raw.to(self.device) if torch.is_tensor(raw) else raw)
        assert cond is not None
        if self.condition_dropout <= 0:
            return cond
        drop = torch.rand(batch_size, generator=self.noise) < self.condition_dropout
        return cond.where(drop, conditioner.null(batch_size, self.device))

    def train_step(self, x0: torch.Tensor, raw: Any = None) -> float:
        """One step of Algorithm 1 (lines 2-5) plus the EMA update; returns the loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor(self.step, self.config)
        if self.objective is not None:
            loss = self.objective.loss(self.model, x0, self.noise)
        else:
            loss = self.model.loss(
                x0,
                self.condition(raw, x0.shape[0]),
                generator=self.noise,
                weighting=self.weighting,
                vlb_weight=self.config.vlb_weight,
            )
        if not torch.isfinite(loss):
            raise self.diverged(f"loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            if not torch.isfinite(norm):  # stop before the step spreads it into the weights
                raise self.diverged(f"gradient norm is {norm.item()}")
        self.optimizer.step()
        self.model.refresh_schedule()
        self.ema.update(self.model)
        self.step += 1
        return loss.item()

    def train(self) -> None:
        """Run the remaining steps with a progress bar (step, loss, it/s, ETA)."""
        self.model.train()
        cfg = self.config
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        stop = _StopRequest()
        try:
            for x0, raw in self.batches():
                if stop.requested:
                    # Ctrl-C or SIGTERM between two steps: the state is whole, keep it
                    self.save()
                    raise KeyboardInterrupt(f"stopped at step {self.step}; checkpoint saved")
                loss = self.train_step(x0, raw)
                window_loss += loss
                window_steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    metrics = {
                        "loss": window_loss / window_steps,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "it_per_s": window_steps / max(elapsed, 1e-9),
                    }
                    if self.objective is not None:
                        metrics.update(self.objective.metrics())
                    if self.on_metrics is not None:
                        self.on_metrics(self.step, metrics)
                    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                every = cfg.checkpoint_every
                if every and self.step % every == 0 and self.step < cfg.steps:
                    self.save()
        finally:
            stop.restore()
            bar.close()
        self.save()

    # -- checkpoints -------------------------------------------------------------------------

    def diverged(self, what: str) -> DdpmkitError:
        """The error that stops a diverged run: the step, what was not finite, and the newest
        checkpoint, which holds the last good state (nothing non-finite is ever saved)."""
        found = list_checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []
        last = f"last good checkpoint: {found[-1][1]}" if found else "no checkpoint was saved"
        return DdpmkitError(f"training diverged at step {self.step}: {what}; {last}")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue training, as named tensors."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.shadow.items()})
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        if self.weighting is not None:
            state = self.weighting.state_dict()
            tensors.update({f"weighting.{k}": v for k, v in state.items()})
        if self.objective is not None:
            state = self.objective.state_dict()
            tensors.update({f"objective.{k}": v for k, v in state.items()})
        tensors["rng.noise"] = self.noise.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        return tensors

    def save(self) -> Path | None:
        """Write a checkpoint for the current step (no-op without a checkpoint folder)."""
        if self.checkpoint_dir is None:
            return None
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise self.diverged("the weights are not finite (not saved)")
        groups = self.optimizer.state_dict()["param_groups"]
        metadata = {
            **self.checkpoint_metadata,
            "step": self.step,
            "ema_updates": self.ema.updates,
            "optimizer_param_groups": groups,
        }
        path = save_checkpoint(
            checkpoint_path(self.checkpoint_dir, self.step), self.state_tensors(), metadata
        )
        prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.step, path)
        return path

    def resume(self) -> int:
        """Restore from the newest checkpoint in ``checkpoint_dir``; returns its step."""
        found = list_checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []
        if not found:
            raise DdpmkitError(f"--resume: no checkpoint in {self.checkpoint_dir}")
        _, path = found[-1]
        tensors, meta = load_checkpoint(path)
        if "config" in self.checkpoint_metadata:
            stateful = [
                key
                for key, part in (("objective", self.objective), ("weighting", self.weighting))
                if any(k.startswith(f"{key}.") for k in tensors)
                or (part is not None and part.state_dict())
            ]
            check_resume_fits(path, meta, self.checkpoint_metadata["config"], stateful)
        self.load_state(tensors, meta)
        return self.step

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Inverse of :meth:`state_tensors` plus the metadata written by :meth:`save`."""
        try:
            self.model.load_state_dict(_strip(tensors, "model."))
        except RuntimeError as exc:
            raise DdpmkitError(
                f"--resume: the checkpoint's model differs from this pipeline's (was the "
                f"pipeline file changed?): {str(exc).splitlines()[0]}"
            ) from exc
        self.ema.shadow = {k: v.to(self.device) for k, v in _strip(tensors, "ema.").items()}
        self.ema.updates = int(meta["ema_updates"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in _strip(tensors, "optim.").items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        groups = meta["optimizer_param_groups"]
        for group in groups:
            group["betas"] = tuple(group["betas"])
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        if self.weighting is not None:
            self.weighting.load_state_dict(_strip(tensors, "weighting."))
        if self.objective is not None:
            self.objective.load_state_dict(_strip(tensors, "objective."))
        self.noise.set_state(tensors["rng.noise"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(meta["step"])

    def ema_model(self) -> DiffusionModel:
        """A copy of the model carrying the EMA weights, in eval mode."""
        model = copy.deepcopy(self.model)
        self.ema.copy_to(model)
        return model.eval()


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


class _StopRequest:
    """Turns SIGINT and SIGTERM into a flag the training loop checks between steps, so a stop
    never lands in the middle of an optimizer step (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request)

    def _request(self, signum: int, frame: object) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
