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
from ddpmkit.core.data import Dataset
from ddpmkit.core.errors import ConfigError, DdpmkitError
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.training import Draws, Generators, LossWeighting, TrainingObjective
from ddpmkit.core.values import Batch, Conditioning
from ddpmkit.core.wiring import CheckContext
from ddpmkit.objectives import diffusion_objective


class EMA:
    """Exponential moving average of a module's state: floating tensors averaged, the rest
    (integer counters) copied."""

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
        """shadow <- d * shadow + (1 - d) * current, in one fused kernel per device and dtype."""
        shadows, values = [], []
        for key, value in module.state_dict().items():
            shadow = self.shadow[key]
            if not shadow.is_floating_point():
                shadow.copy_(value)
                continue
            shadows.append(shadow)
            values.append(value if value.dtype == shadow.dtype else value.to(shadow.dtype))
        if shadows:
            torch._foreach_lerp_(shadows, values, 1.0 - self.current_decay())
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


class _Loss(nn.Module):
    """The objective's loss as a module's forward, so DDP can wrap it: DDP synchronises the
    gradients of whatever its module's forward computed, here every model parameter."""

    def __init__(self, model: DiffusionModel, objective: TrainingObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x0: torch.Tensor, cond: Conditioning | None, draws: Draws) -> torch.Tensor:
        """The objective's loss of this shard ``x0`` at its rows of the draws."""
        return self.objective.loss(self.model, x0, cond, draws)


class TrainLoop:
    """The training loop of the trainer and of every stage that trains a network: AdamW steps
    of a network's trainable parameters on the :meth:`loss` of each step's batch, with
    learning-rate warm-up and decay, a gradient scaler for fp16, gradient-norm clipping and
    finiteness checks.

    :meth:`train` runs the remaining steps with a progress bar (step, loss, it/s, ETA) and
    every ``config.log_every`` steps hands the mean loss, the learning rate, it/s and
    :meth:`metrics` to ``on_metrics``. The data order is :func:`batch_indices` of ``seed``.
    """

    def __init__(
        self,
        network: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        *,
        device: torch.device,
        seed: int = 0,
        on_metrics: MetricsCallback | None = None,
        progress: bool = True,
        desc: str = "train",
    ) -> None:
        self.network = network
        self.dataset = dataset
        self.config = config
        self.device = device
        self.seed = seed
        self.on_metrics = on_metrics
        self.progress = progress
        self.desc = desc
        self.step = 0
        self.dist: DistContext | None = None
        self.shard = slice(0, config.batch_size)
        # the trained parameters, listed once: the optimizer's, and the ones clipping visits
        self.trained = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trained,
            lr=config.lr,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
        )
        self.scaler = grad_scaler(device, config.precision)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def loss(self, batch: Batch) -> torch.Tensor:
        """The scalar loss of this process's ``batch`` (Algorithm 1, lines 3-5)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """What follows each optimizer step (default: nothing)."""

    def metrics(self) -> dict[str, float]:
        """Numbers logged beside the loss (default: none)."""
        return {}

    def save(self) -> Path | None:
        """Save the state to continue from (default: nothing saved)."""
        return None

    def finish(self) -> None:
        """What follows the last step (default: nothing)."""

    def diverged(self, what: str) -> DdpmkitError:
        """The error that stops a diverged run: the step, and what was not finite."""
        return DdpmkitError(f"training diverged at step {self.step}: {what}")

    # -- the loop ----------------------------------------------------------------------------

    def batches(self) -> Iterator[Batch]:
        """This process's shard of the batch of each remaining step (Algorithm 1, line 2)."""
        for step in range(self.step, self.config.steps):
            indices = batch_indices(len(self.dataset), self.config.batch_size, step, self.seed)
            yield self.dataset.batch(indices[self.shard])

    def step_loss(self, batch: Batch) -> torch.Tensor:
        """One optimizer step on the loss of ``batch`` (Algorithm 1, line 5), then
        :meth:`after_step`; returns the loss as a tensor on the device (reading it would wait
        for the device: the loop does so only when it logs)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor(self.step, self.config)
        loss = self.loss(batch)
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
        self.after_step()
        self.step += 1
        return loss.detach()

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        """Stop at once when ``value`` is not finite. On the CPU it is read as a number (a
        fraction of a microsecond, where a tensor test is several); on a GPU reading would
        wait for the device, so the check is folded into a flag read at the next log or
        checkpoint instead (and a trainer refuses to save non-finite weights either way)."""
        if self.device.type == "cpu":
            number = value.item()
            if not math.isfinite(number):
                raise self.diverged(f"{what} is {number}")
        else:
            self._nonfinite |= ~torch.isfinite(value.detach())

    def train_step(self, batch: Batch) -> float:
        """:meth:`step_loss`, with the loss read back as a number (checked to be finite)."""
        loss = self.step_loss(batch).item()
        if not math.isfinite(loss):
            raise self.diverged(f"loss is {loss}")
        return loss

    def train(self) -> None:
        """Run the remaining steps with a progress bar (step, loss, it/s, ETA)."""
        self.network.train()
        cfg = self.config
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=self.desc,
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        # the window's losses stay on the device: no host sync per step
        window: list[torch.Tensor] = []
        window_start = time.perf_counter()
        stop = _StopRequest()
        try:
            for batch in self.batches():
                if self._stop_agreed(stop):
                    # Ctrl-C or SIGTERM between two steps: the state is whole, keep it
                    saved = "; checkpoint saved" if self.save() is not None else ""
                    raise KeyboardInterrupt(f"stopped at step {self.step}{saved}")
                window.append(self.step_loss(batch))
                bar.update(1)
                logs = self.step % cfg.log_every == 0 or self.step == cfg.steps
                every = cfg.checkpoint_every
                saves = bool(every) and self.step % every == 0 and self.step < cfg.steps
                if logs or saves:
                    loss = self._window_mean(window)
                if logs:
                    elapsed = time.perf_counter() - window_start
                    self._log(loss, len(window) / max(elapsed, 1e-9), bar)
                    window, window_start = [], time.perf_counter()
                if saves:
                    self.save()
        finally:
            stop.restore()
            bar.close()
        self.finish()

    def _log(self, loss: float, it_per_s: float, bar: Any) -> None:
        """Show the window's mean loss and report it with the learning rate, it/s and
        :meth:`metrics` to ``on_metrics``."""
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        lr = self.optimizer.param_groups[0]["lr"]
        metrics = {"loss": loss, "lr": lr, "it_per_s": it_per_s, **self.metrics()}
        if self.on_metrics is not None:
            self.on_metrics(self.step, metrics)

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


class Trainer(TrainLoop):
    """Trains a :class:`DiffusionModel` on a :class:`Dataset` with a training objective: the
    ``objective`` given (``[train.objective]``), else the model's diffusion loss
    (:func:`~ddpmkit.diffusion_objective` of the ``weighting`` and ``config.vlb_weight``).

    ``train()`` runs from the current step to ``config.steps``; with a ``checkpoint_dir`` it
    saves every ``checkpoint_every`` steps and at the end, and :meth:`resume` restores the
    weights, EMA, optimizer, gradient scaler and random state from the newest checkpoint there.

    With a :class:`~ddpmkit.app.distributed.DistContext` each rank computes the loss on its shard
    of every global batch inside ``DistributedDataParallel``; the objective's random numbers
    (t, noise) and the condition-dropout coins are drawn for the whole global batch on every
    rank (one generator, one seed), so the ranks together see exactly the examples, t and noise
    of one process with the same batch size.
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
        device = model.alphas_cumprod.device
        super().__init__(
            model,
            dataset,
            config,
            device=device,
            seed=seed,
            on_metrics=on_metrics,
            progress=progress,
        )
        self.model = model
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_metadata = checkpoint_metadata or {}
        self.on_checkpoint = on_checkpoint
        self.weighting = weighting
        self.condition_dropout = condition_dropout
        self.objective = self._objective_for_run(objective, dist)
        self.dist = dist
        if dist is not None:
            self.shard = dist.shard(config.batch_size)
        prepare_for_training(model, config)
        # after prepare_for_training: the averages take the weights' memory layout
        self.ema = EMA(model, config.ema_decay, config.ema_warmup)
        self.noise = torch.Generator().manual_seed(seed + 1)
        # on a GPU the Gaussian noise is drawn there: no host draw and copy every step
        self.eps_noise = (
            self.noise if device.type == "cpu" else torch.Generator(device).manual_seed(seed + 2)
        )
        self.replica_digests: list[str] | None = None
        self._loss = _Loss(model, self.objective)
        self._forward = self._wrapped_loss(dist)

    def _objective_for_run(
        self, objective: TrainingObjective | None, dist: DistContext | None
    ) -> TrainingObjective:
        """``objective``, or the model's diffusion loss; checked against this run's precision
        and processes, and set up."""
        if objective is None:
            objective = diffusion_objective(self.model, self.weighting, self.config.vlb_weight)
        if self.config.precision != "fp32" and not objective.autocast:
            raise ConfigError(
                f"train.precision: objective {type(objective).__name__} trains in fp32 (it "
                "runs its own networks and updates); remove train.precision"
            )
        if dist is not None:
            objective.check_distributed()
        objective.check(CheckContext(model=self.model))
        objective.setup(self.model, tuple(self.dataset.shape))
        return objective

    def _wrapped_loss(self, dist: DistContext | None) -> Callable[..., torch.Tensor]:
        """The loss module's forward itself in one process (no hooks to run: it is private);
        with several, the module inside ``DistributedDataParallel``."""
        if dist is None:
            return self._loss.forward
        from torch.nn.parallel import DistributedDataParallel

        # no batch statistics: the parameters are all the ranks must share
        params = inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync: dict[str, Any] = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in params
            else {"broadcast_buffers": False}
        )
        return DistributedDataParallel(
            self._loss,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            **no_buffer_sync,
        )

    # -- one step ----------------------------------------------------------------------------

    def loss(self, batch: Batch) -> torch.Tensor:
        """Algorithm 1, lines 3-5, on this rank's shard of the step's batch: the objective's
        draws and the conditions, then its loss inside the module DDP wraps."""
        images = batch.images.to(self.device, non_blocking=True)
        x0 = channels_last(images) if self.config.channels_last else images
        draws = self.shard_draws(tuple(x0.shape[1:]))
        conditioner = self.model.conditioner
        cond = self.condition(conditioner.raw_from_batch(batch) if conditioner else None)
        with autocast(self.device, self.config.precision):
            return self._forward(x0, cond, draws)

    def shard_draws(self, example_shape: tuple[int, ...]) -> Draws:
        """The objective's draws for the global batch, from the generators every rank shares
        (so every rank draws the same numbers): this rank's rows, on the device."""
        generators = Generators(indices=self.noise, noise=self.eps_noise)
        draws = self.objective.draw(self.model, self.config.batch_size, example_shape, generators)
        shard = {key: value[self.shard].to(self.device) for key, value in draws.items()}
        if self.config.channels_last:
            return {key: channels_last(value) for key, value in shard.items()}
        return shard

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

    def after_step(self) -> None:
        """Re-read a schedule the step trained, and update the EMA."""
        self.model.refresh_schedule()
        self.ema.update(self.model)

    def metrics(self) -> dict[str, float]:
        """The objective's numbers of the last step."""
        return self.objective.metrics()

    def finish(self) -> None:
        """Check that every rank holds the same weights, and save the last checkpoint."""
        if self.dist is not None:
            self.replica_digests = self.check_replicas()
        self.save()

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
        tensors.update({f"objective.{k}": v for k, v in self.objective.state_dict().items()})
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
        for key, value in _strip(tensors, "ema.").items():
            self.ema.shadow[key].copy_(value)  # into the averages' own memory layout
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
