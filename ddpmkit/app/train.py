"""Training (Ho et al. 2020, Algorithm 1): AdamW, warm-up, clipping, EMA, checkpoints."""

from __future__ import annotations

import copy
import inspect
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

from ddpmkit.app import distributed
from ddpmkit.app.accel import autocast, channels_last, grad_scaler, prepare_for_training
from ddpmkit.app.config import TrainConfig
from ddpmkit.app.distributed import DistContext
from ddpmkit.app.fingerprint import check_resume_fits
from ddpmkit.core.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from ddpmkit.core.errors import ConfigError, DdpmkitError
from ddpmkit.core.interfaces import (
    Conditioning,
    Dataset,
    LearnableSchedule,
    LossWeighting,
    TrainingObjective,
)
from ddpmkit.core.model import DiffusionModel


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        """The averaged tensors, by state-dict key."""
        return self._shadow

    @shadow.setter
    def shadow(self, tensors: dict[str, torch.Tensor]) -> None:
        self._shadow = tensors
        self._lists: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]] | None = None

    def current_decay(self) -> float:
        """The decay used by the next update: min(decay, (1 + n) / (10 + n)) with warm-up."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * current, for floating tensors; copy the rest."""
        d = self.current_decay()
        if self._lists is None or self._lists[0] is not module:
            self._lists = self._parameter_lists(module)
        if self._lists is not None:
            # one fused kernel per device and dtype instead of one per tensor
            torch._foreach_lerp_(self._lists[1], self._lists[2], 1.0 - d)
        else:
            self._update_walking(module, d)
        self.updates += 1

    def _update_walking(self, module: nn.Module, d: float) -> None:
        """The update by a walk of the state dict: floats averaged, the rest copied."""
        floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for key, value in module.state_dict().items():
            shadow = self._follow_layout(key, value)
            if shadow.is_floating_point() and shadow.dtype == value.dtype:
                floats[0].append(shadow)
                floats[1].append(value.detach())
            elif shadow.is_floating_point():
                shadow.lerp_(value.detach().to(shadow.dtype), 1.0 - d)
            else:
                shadow.copy_(value)
        if floats[0]:
            torch._foreach_lerp_(floats[0], floats[1], 1.0 - d)

    def _follow_layout(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """The shadow of ``key``, re-laid out like ``value`` if the model changed the tensor's
        layout (a U-Net made its weights channels-last): a lerp between two layouts is slow."""
        shadow = self._shadow[key]
        if shadow.is_floating_point() and shadow.stride() != value.stride():
            shadow = self._shadow[key] = torch.empty_like(value).copy_(shadow)
        return shadow

    def _parameter_lists(
        self, module: nn.Module
    ) -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]] | None:
        """``(module, shadows, parameters)`` when every entry of the module's state dict is a
        floating-point parameter of its shadow's dtype, else ``None``.

        A parameter stays the same tensor object while it trains (the optimizer relies on
        that too), so these lists serve every later update without walking the state dict;
        a module with persistent buffers is walked at each update, since a buffer may be
        replaced by a new tensor.
        """
        state = module.state_dict(keep_vars=True)
        if state.keys() != self._shadow.keys() or not all(
            isinstance(v, nn.Parameter) and v.dtype == self._shadow[k].dtype
            for k, v in state.items()
        ):
            return None
        shadows = [self._follow_layout(k, v) for k, v in state.items()]
        if not all(s.is_floating_point() for s in shadows):
            return None
        return module, shadows, list(state.values())

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module``."""
        module.load_state_dict(self._shadow)


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


class _Loss(nn.Module):
    """The model's training loss as a module's forward, so DDP can wrap it: DDP synchronises
    the gradients of whatever its module's forward computed, here every model parameter."""

    def __init__(self, model: DiffusionModel, config: TrainConfig, weighting: Any) -> None:
        super().__init__()
        self.model = model
        self.vlb_weight = config.vlb_weight
        self.weighting = weighting

    def forward(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        correction: torch.Tensor | None,
        cond: Conditioning | None = None,
    ) -> torch.Tensor:
        """The batch mean of the loss at the given indices and noise."""
        return self.model.loss(
            x0,
            cond,
            t=t,
            eps=eps,
            correction=correction,
            weighting=self.weighting,
            vlb_weight=self.vlb_weight,
        )


class Trainer:
    """Trains a :class:`DiffusionModel` on a :class:`Dataset` with L_simple.

    ``train()`` runs from the current step to ``config.steps``; with a ``checkpoint_dir`` it
    saves every ``checkpoint_every`` steps and at the end, and :meth:`resume` restores the
    weights, EMA, optimizer, gradient scaler and random state from the newest checkpoint there.

    With a :class:`~ddpmkit.app.distributed.DistContext` each rank computes the loss on its shard
    of every global batch inside ``DistributedDataParallel``; the indices t and the noise are
    drawn for the whole global batch on every rank (one generator, one seed), so the ranks
    together see exactly the examples, t and noise of one process with the same batch size.
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
        dist: DistContext | None = None,
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
        # the trained parameters, listed once: the optimizer's, and the ones clipping visits
        self.trained = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trained,
            lr=config.lr,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
        )
        self.ema = EMA(model, config.ema_decay, config.ema_warmup)
        self.noise = torch.Generator().manual_seed(seed + 1)
        # on a GPU the Gaussian noise is drawn there: no host draw and copy every step
        self.eps_noise = (
            self.noise
            if self.device.type == "cpu"
            else torch.Generator(self.device).manual_seed(seed + 2)
        )
        if objective is not None:
            if config.precision != "fp32":
                raise ConfigError(
                    "train.precision: a train.objective trains in fp32 (it runs its own "
                    "networks and updates); remove train.precision"
                )
            objective.setup(model, tuple(dataset.shape))
        # the model's own draws: a learnable schedule's bound stratifies t itself
        self._own_draws = objective is not None or isinstance(model.schedule, LearnableSchedule)
        if dist is not None and self._own_draws:
            raise ConfigError(
                "train: a train.objective or a learnable schedule is not supported in "
                "multi-process training yet"
            )
        self.step = 0
        self.dist = dist
        self.shard = dist.shard(config.batch_size) if dist else slice(0, config.batch_size)
        if dist is not None and weighting is not None and weighting.observes:
            raise ConfigError(
                "train.weighting: a weighting that learns from the losses it observes "
                "(importance sampling) is not supported in multi-process training yet"
            )
        prepare_for_training(model, config)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.scaler = grad_scaler(self.device, config.precision)
        self.replica_digests: list[str] | None = None
        self._loss = _Loss(model, config, weighting)
        # the loss module's forward itself in one process (no hooks to run: it is private)
        self._forward: Callable[..., torch.Tensor] = self._loss.forward
        if dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            # no batch statistics: the parameters are all the ranks must share
            params = inspect.signature(DistributedDataParallel).parameters
            no_buffer_sync: dict[str, Any] = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in params
                else {"broadcast_buffers": False}
            )
            self._forward = DistributedDataParallel(
                self._loss,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                **no_buffer_sync,
            )

    # -- the loop ----------------------------------------------------------------------------

    def batches(self) -> Iterator[tuple[torch.Tensor, Any]]:
        """Training images for each remaining step (this rank's shard), on the model's device,
        and their raw conditions (``None`` for an unconditional model)."""
        conditioner = self.model.conditioner
        for step in range(self.step, self.config.steps):
            indices = batch_indices(len(self.dataset), self.config.batch_size, step, self.seed)
            batch = self.dataset.batch(indices[self.shard])
            raw = conditioner.raw_from_batch(batch) if conditioner is not None else None
            images = batch.images.to(self.device, non_blocking=True)
            yield (channels_last(images) if self.config.channels_last else images), raw

    def draw(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Algorithm 1, lines 3-4, for the global batch: ``(t, eps, correction)`` of this
        rank's shard. Every rank draws the same numbers, in the order ``model.loss`` would."""
        batch = self.config.batch_size
        if self.weighting is not None:
            t, correction = self.weighting.sample_t(batch, self.model, self.noise)
        else:
            t = torch.randint(0, self.model.T, (batch,), generator=self.noise)
            correction = None
        gen = self.eps_noise
        eps = torch.randn((batch, *x0.shape[1:]), generator=gen, device=gen.device, dtype=x0.dtype)
        if self.dist is not None:
            t, eps = t[self.shard], eps[self.shard]
            correction = None if correction is None else correction[self.shard]
        eps = eps.to(self.device)
        return t, channels_last(eps) if self.config.channels_last else eps, correction

    def condition(self, raw: Any) -> Conditioning | None:
        """Encode ``raw`` and replace each example's condition by the null one with
        probability ``condition_dropout`` (Ho & Salimans 2021, Algorithm 1); the coin flips
        are drawn for the global batch, like t and eps, and this rank keeps its shard."""
        conditioner = self.model.conditioner
        if conditioner is None or raw is None:
            return None
        cond = self.model.encode(raw.to(self.device) if torch.is_tensor(raw) else raw)
        assert cond is not None
        if self.condition_dropout <= 0:
            return cond
        coins = torch.rand(self.config.batch_size, generator=self.noise)[self.shard]
        drop = (coins < self.condition_dropout).to(self.device)
        return cond.where(drop, conditioner.null(int(drop.numel()), self.device))

    def step_loss(self, x0: torch.Tensor, raw: Any = None) -> torch.Tensor:
        """One step of Algorithm 1 (lines 2-5) plus the EMA update; returns the loss as a
        tensor on the device (reading it would wait for the device: the loop does so only
        when it logs)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor(self.step, self.config)
        if self.objective is not None:
            loss: torch.Tensor = self.objective.loss(self.model, x0, self.noise)
        elif self._own_draws:
            with autocast(self.device, self.config.precision):
                loss = self.model.loss(x0, self.condition(raw), generator=self.noise)
        else:
            t, eps, correction = self.draw(x0)
            cond = self.condition(raw)
            with autocast(self.device, self.config.precision):
                loss = self._forward(x0, t, eps, correction, cond)
        self._check_finite(loss, "loss")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.trained, self.config.grad_clip)
            if self.scaler is None:  # fp16's scaler skips steps with overflowed gradients
                self._check_finite(norm, "gradient norm")  # before the step spreads it
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.model.refresh_schedule()
        self.ema.update(self.model)
        self.step += 1
        return loss.detach()

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        """Stop at once when ``value`` is not finite. On the CPU it is read as a number (a
        fraction of a microsecond, where a tensor test is several); on a GPU reading would
        wait for the device, so the check is folded into a flag read at the next log or
        checkpoint instead (and :meth:`save` refuses non-finite weights either way)."""
        if self.device.type == "cpu":
            number = value.item()
            if not math.isfinite(number):
                raise self.diverged(f"{what} is {number}")
        else:
            self._nonfinite |= ~torch.isfinite(value.detach())

    def train_step(self, x0: torch.Tensor, raw: Any = None) -> float:
        """:meth:`step_loss`, with the loss read back as a number (checked to be finite)."""
        loss = self.step_loss(x0, raw).item()
        if not math.isfinite(loss):
            raise self.diverged(f"loss is {loss}")
        return loss

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
        # the window's losses stay on the device: no host sync per step
        window_losses: list[torch.Tensor] = []
        window_start = time.perf_counter()
        stop = _StopRequest()
        try:
            for x0, raw in self.batches():
                if self._stop_agreed(stop):
                    # Ctrl-C or SIGTERM between two steps: the state is whole, keep it
                    self.save()
                    raise KeyboardInterrupt(f"stopped at step {self.step}; checkpoint saved")
                window_losses.append(self.step_loss(x0, raw))
                bar.update(1)
                logs = self.step % cfg.log_every == 0 or self.step == cfg.steps
                every = cfg.checkpoint_every
                saves = bool(every) and self.step % every == 0 and self.step < cfg.steps
                if logs or saves:
                    loss = self._window_mean(window_losses)
                if logs:
                    elapsed = time.perf_counter() - window_start
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    metrics = {
                        "loss": loss,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "it_per_s": len(window_losses) / max(elapsed, 1e-9),
                    }
                    if self.objective is not None:
                        metrics.update(self.objective.metrics())
                    if self.on_metrics is not None:
                        self.on_metrics(self.step, metrics)
                    window_losses, window_start = [], time.perf_counter()
                if saves:
                    self.save()
        finally:
            stop.restore()
            bar.close()
        if self.dist is not None:
            self.replica_digests = self.check_replicas()
        self.save()

    def _window_mean(self, losses: list[torch.Tensor]) -> float:
        """The mean loss since the last log (over all ranks); an error if it, or any loss or
        gradient norm since (on a GPU, where they are not read every step), is not finite."""
        steps = len(losses)
        mean = torch.stack(losses).float().mean() if losses else torch.zeros((), device=self.device)
        if self.dist is not None:
            mean = distributed.all_reduce_mean(mean, self.dist)
        value = float(mean.item())
        if not math.isfinite(value) or bool(self._nonfinite):
            raise self.diverged(
                f"a loss or gradient norm of the {steps} steps up to here is not finite "
                f"(mean loss {value})"
            )
        return value

    def _stop_agreed(self, stop: _StopRequest) -> bool:
        """Whether to stop now; all ranks agree, checking at log points only (one all-reduce)."""
        if self.dist is None:
            return stop.requested
        if self.step % self.config.log_every:
            return False
        return distributed.all_reduce_max(float(stop.requested), self.dist, self.device) > 0

    def check_replicas(self) -> list[str]:
        """Every rank's digest of its weights and EMA; an error unless all are identical."""
        assert self.dist is not None
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state.update({f"ema.{k}": v for k, v in self.ema.shadow.items()})
        digests = distributed.all_gather_object(distributed.digest(state), self.dist)
        if len(set(digests)) != 1:
            raise DdpmkitError(f"distributed training: the ranks' weights differ: {digests}")
        return list(digests)

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
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
            tensors["rng.eps"] = self.eps_noise.get_state()
        return tensors

    def save(self) -> Path | None:
        """Write a checkpoint for the current step (no-op without a checkpoint folder, and on
        every rank but 0)."""
        if self.checkpoint_dir is None or (self.dist is not None and not self.dist.is_main):
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
        if self.scaler is not None:
            metadata["grad_scaler"] = self.scaler.state_dict()
        if self.dist is not None:
            metadata["world_size"] = self.dist.world_size
        if self.replica_digests is not None:
            metadata["replica_digests"] = self.replica_digests
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
        if self.scaler is not None and "grad_scaler" in meta:
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.noise.set_state(tensors["rng.noise"])
        torch.set_rng_state(tensors["rng.torch"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
            self.eps_noise.set_state(tensors["rng.eps"])
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
