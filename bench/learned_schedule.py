"""A learned schedule against the same schedule frozen: the bound and its estimator's spread.

An MLP is trained on the variational bound itself (``ddpmkit.VLBObjective``) on the 2D
three-component mixture of bench/oracle_vlb.py, once with the ``learned`` schedule frozen at
its start (log SNR linear from 13.3 to -5; ``learn_ends = learn_shape = false``) and once
trained with it (Kingma et al. 2021). Same seeds, same steps. On held-out points it reports
the bound (all T terms, nats per example) minus the mixture's exact NLL, and the standard
deviation of the one-sample bound (T-1) L_{t-1} + L_0 + L_T that training follows; it writes the two
log-SNR curves to docs/images/learned-schedule.png.

    python bench/learned_schedule.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from mixture import MIXTURE

import ddpmkit
from ddpmkit.app.evaluate import nll_bits_per_dim
from ddpmkit.tools.plots import save_figure

T = 1000
HELD_OUT = 4000


def train(learn: bool, steps: int, data: torch.Tensor) -> ddpmkit.DiffusionModel:
    """An MLP and the learned schedule (trained or frozen) after ``steps`` of Adam on L_VLB."""
    torch.manual_seed(0)
    model = ddpmkit.DiffusionModel(
        ddpmkit.create("schedule", "learned", timesteps=T, learn_ends=learn, learn_shape=learn),
        ddpmkit.create("denoiser", "mlp", in_channels=2, hidden=128, layers=3),
        ddpmkit.create("parameterization", "eps"),
        # fixed-large: L_0's decoder variance is then 1 - abar_0 = sigma_0^2 (fixed-small's is
        # Ho et al.'s clip, beta~ of index 1, far below sigma_0^2 on a log-SNR-linear start)
        variance=ddpmkit.create("variance", "fixed-large"),
        decoder="gaussian",
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    noise = torch.Generator().manual_seed(1)
    order = torch.Generator().manual_seed(2)
    objective = ddpmkit.VLBObjective()
    start = time.perf_counter()
    for step in range(steps):
        x0 = data[torch.randint(0, data.shape[0], (512,), generator=order)]
        loss = objective.batch_loss(model, x0, generator=noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.refresh_schedule()
        if step % 500 == 0 or step == steps - 1:
            rate = (step + 1) / (time.perf_counter() - start)
            print(f"  step {step:5d}  loss {loss.item():8.3f} bits/dim  {rate:5.1f} it/s")
    return model.eval()


def estimator_std(model: ddpmkit.DiffusionModel, x0: torch.Tensor, repeats: int = 8) -> float:
    """Standard deviation (nats) of the one-sample bound (T-1) L_{t-1} + L_0 + L_T that
    ``VLBObjective`` trains on, over examples, t and the noise."""
    noise = torch.Generator().manual_seed(3)
    objective = ddpmkit.VLBObjective()
    to_nats = x0.shape[1] * math.log(2.0)
    with torch.no_grad():
        draws = [
            objective.batch_loss(model, x0[i : i + 1], generator=noise) * to_nats
            for _ in range(repeats)
            for i in range(0, x0.shape[0], 8)
        ]
    return float(torch.stack(draws).std())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--figure", type=Path, default=Path("docs/images/learned-schedule.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    mixture = ddpmkit.create("dataset", "gmm", num_examples=20000 + HELD_OUT, seed=0, **MIXTURE)
    data = mixture.batch(list(range(20000))).images
    x0 = mixture.batch(list(range(20000, 20000 + HELD_OUT))).images
    oracle = ddpmkit.create("denoiser", "gmm-oracle", **MIXTURE)
    nll = -oracle.log_prob(x0.double()).float()
    rows, curves = [], {}
    for learn in (False, True):
        name = "learned" if learn else "frozen"
        print(name, flush=True)
        model = train(learn, args.steps, data)
        bound = nll_bits_per_dim(model, [x0], generator=torch.Generator().manual_seed(4))
        nats = bound.per_example * x0.shape[1] * math.log(2.0)
        gap = nats - nll
        rows.append(
            (
                name,
                float(gap.mean()),
                float(gap.std() / math.sqrt(len(gap))),
                estimator_std(model, x0),
                model.schedule.log_snr[0].item(),
                model.schedule.log_snr[-1].item(),
            )
        )
        curves[name] = model.schedule.log_snr.clone()
        print(rows[-1], flush=True)
    print(f"\nexact NLL of the held-out points: {nll.mean():.4f} nats")
    print(
        "| schedule | VLB - NLL (nats) | standard error | std of one-sample bound (nats) "
        "| log SNR(0) | log SNR(T-1) |"
    )
    print("|---|---|---|---|---|---|")
    for name, gap, se, spread, first, last in rows:
        print(f"| {name} | {gap:+.4f} | {se:.4f} | {spread:.2f} | {first:.2f} | {last:.2f} |")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        axis.plot(torch.arange(T) / (T - 1), curve, label=name)
    axis.set_xlabel("t / (T - 1)")
    axis.set_ylabel("log SNR(t)")
    axis.set_title(f"learned schedule after {args.steps} steps on the 2D mixture")
    axis.legend()
    save_figure(figure, args.figure)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
