"""Importance sampling of t for L_vlb (Nichol & Dhariwal 2021, section 3.3)."""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmkit import ConfigError, DiffusionModel, Params
from ddpmkit_weightings.vlb import VLBWeighting


class ImportanceWeightingParams(Params):
    """Parameters of the ``importance`` weighting."""

    history: int = Field(
        10,
        ge=1,
        le=1000,
        description="Recent losses kept per timestep; t is drawn uniformly until every t has "
        "this many.",
    )
    uniform_prob: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Uniform probability mass mixed into p_t, so that every t keeps being drawn.",
    )


class ImportanceWeighting(VLBWeighting):
    """L_vlb = E_{t ~ p_t}[L_t / p_t] with p_t proportional to sqrt(E[L_t^2]) (Nichol &
    Dhariwal 2021, section 3.3, eq. 18).

    The weights are those of :class:`~ddpmkit_weightings.VLBWeighting` (this trains L_vlb,
    with the same restriction to fixed reverse variances); only the law of t changes. The
    history keeps, per timestep, the last ``history`` losses given to :meth:`observe`: what
    the ``SimpleObjective`` computed per example *before* the correction, i.e. w_t times the
    eps-space error, the trainable part of L_{t-1} in nats per dimension (plus lambda T L_vlb
    in bits per dimension when the hybrid loss is on). While some t has fewer than
    ``history`` losses, t is uniform with correction 1; afterwards p_t = (1 - u) r_t / sum r
    + u / T with r_t = sqrt(mean of the stored L_t^2) and u = ``uniform_prob``, and each
    draw's correction 1 / (T p_t) makes the batch mean an unbiased estimate of the uniform-t
    loss. As in the authors' code, the history is a per-t ring buffer updated in draw order.

    :meth:`state_dict` / :meth:`load_state_dict` save and restore the history, so a resumed
    run draws exactly the t it would have drawn.
    """

    Params = ImportanceWeightingParams
    observes = True
    params: ImportanceWeightingParams

    def __init__(self, params: ImportanceWeightingParams | None = None) -> None:
        super().__init__(params)
        # loss_history[t, j]: a stored loss of index t, slot j; loss_counts[t]: losses seen
        # (the next write goes to slot loss_counts[t] % history). Sized on first use.
        self.loss_history = torch.zeros(0, self.params.history, dtype=torch.float64)
        self.loss_counts = torch.zeros(0, dtype=torch.long)

    def _grow(self, size: int) -> None:
        """Make room for indices ``0 .. size - 1`` (new rows are empty)."""
        extra = size - self.loss_counts.numel()
        if extra > 0:
            rows = torch.zeros(extra, self.params.history, dtype=torch.float64)
            self.loss_history = torch.cat([self.loss_history, rows])
            self.loss_counts = torch.cat([self.loss_counts, torch.zeros(extra, dtype=torch.long)])

    def warmed_up(self, T: int) -> bool:
        """Whether every index ``0 .. T - 1`` has a full history of losses."""
        counts = self.loss_counts
        return counts.numel() >= T and bool((counts[:T] >= self.params.history).all())

    def probabilities(self, T: int) -> torch.Tensor:
        """p_t over ``0 .. T - 1`` (float64, ``(T,)``): uniform until warmed up."""
        uniform = torch.full((T,), 1.0 / T, dtype=torch.float64)
        if not self.warmed_up(T):
            return uniform
        rms = self.loss_history[:T].pow(2).mean(dim=1).sqrt()
        total = rms.sum()
        if not (torch.isfinite(total) and total > 0):  # all-zero or broken losses: stay uniform
            return uniform
        u = self.params.uniform_prob
        return (1.0 - u) * rms / total + u * uniform

    def sample_t(
        self, batch: int, model: DiffusionModel, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, 1 / (T p_t))`` with t ~ p_t (uniform and correction 1 before warm-up)."""
        T = model.T
        if self.loss_counts.numel() > T:
            raise ConfigError(
                f"importance weighting: its history covers {self.loss_counts.numel()} "
                f"timesteps but the model has T = {T}"
            )
        self._grow(T)
        if not self.warmed_up(T):
            t = torch.randint(0, T, (batch,), generator=generator)
            return t, torch.ones(batch)
        p = self.probabilities(T)
        t = torch.multinomial(p, batch, replacement=True, generator=generator)
        return t, (1.0 / (T * p[t])).float()

    def observe(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each example's loss to the history of its t, in batch order."""
        t = t.detach().cpu().long().flatten()
        losses = losses.detach().cpu().to(torch.float64).flatten()
        if t.shape != losses.shape:
            raise ValueError(f"observe: {t.numel()} indices but {losses.numel()} losses")
        if t.numel() == 0:
            return
        self._grow(int(t.max()) + 1)
        # rank of each example among the earlier examples of the same t in this batch
        order = torch.argsort(t, stable=True)
        ts, pos = t[order], torch.arange(t.numel())
        starts = torch.ones_like(ts, dtype=torch.bool)
        starts[1:] = ts[1:] != ts[:-1]
        first = torch.cummax(torch.where(starts, pos, 0), dim=0).values
        rank = torch.empty_like(pos)
        rank[order] = pos - first
        seen = torch.bincount(t, minlength=self.loss_counts.numel())
        # sequential ring writes: the j-th occurrence goes to slot (count + j) % history, and
        # only the last `history` occurrences of a t in this batch survive
        keep = seen[t] - rank <= self.params.history
        slot = (self.loss_counts[t] + rank) % self.params.history
        self.loss_history[t[keep], slot[keep]] = losses[keep]
        self.loss_counts += seen

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"loss_history": (T, history) float64, "loss_counts": (T,) int64}``, or ``{}``
        before the first use."""
        if self.loss_counts.numel() == 0:
            return {}
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (``{}`` resets the history)."""
        if not state:
            self.loss_history = torch.zeros(0, self.params.history, dtype=torch.float64)
            self.loss_counts = torch.zeros(0, dtype=torch.long)
            return
        if set(state) != {"loss_history", "loss_counts"}:
            raise ConfigError(
                f"importance weighting: expected loss_history and loss_counts, got {sorted(state)}"
            )
        history, counts = state["loss_history"], state["loss_counts"]
        if history.ndim != 2 or history.shape[1] != self.params.history:
            raise ConfigError(
                f"importance weighting: saved history has shape {tuple(history.shape)}, but "
                f"history = {self.params.history}"
            )
        if counts.shape != history.shape[:1]:
            raise ConfigError(
                f"importance weighting: {counts.numel()} counts for {history.shape[0]} timesteps"
            )
        self.loss_history = history.detach().cpu().to(torch.float64).clone()
        self.loss_counts = counts.detach().cpu().long().clone()
