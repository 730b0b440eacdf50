"""The trainer's EMA: the closed form of the average, its warm-up, and what it copies."""

from __future__ import annotations

import torch
from torch import nn

from ddpmkit.app.train import EMA


def closed_form(start: torch.Tensor, values: list[torch.Tensor], d: float) -> torch.Tensor:
    """d^n s_0 + sum_k (1 - d) d^(n - k) v_k: n updates with constant decay d."""
    n = len(values)
    out = d**n * start
    for k, v in enumerate(values, start=1):
        out = out + (1 - d) * d ** (n - k) * v
    return out


def run_updates(module: nn.Module, ema: EMA, steps: int) -> list[dict[str, torch.Tensor]]:
    """Set the module's floating tensors to fresh values ``steps`` times, updating each time."""
    seen = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        with torch.no_grad():
            for tensor in module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(torch.randn(tensor.shape, generator=gen))
        seen.append({k: v.clone() for k, v in module.state_dict().items()})
        ema.update(module)
    return seen


class WithBuffers(nn.Module):
    """Parameters plus a persistent float buffer and an integer one."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_parameters_and_float_buffers_follow_the_closed_form() -> None:
    d = 0.9
    for module in (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), WithBuffers()):
        start = {k: v.clone() for k, v in module.state_dict().items()}
        ema = EMA(module, d, warmup=False)
        seen = run_updates(module, ema, 5)
        for key, shadow in ema.shadow.items():
            if not shadow.is_floating_point():
                continue
            expected = closed_form(start[key], [s[key] for s in seen], d)
            # float32 lerps against a float32 sum of five terms: a few ulps of values ~1
            torch.testing.assert_close(shadow, expected, rtol=1e-6, atol=1e-6)


def test_integer_state_is_copied() -> None:
    module = WithBuffers()
    ema = EMA(module, 0.9, warmup=False)
    module.count += 7
    ema.update(module)
    assert int(ema.shadow["count"]) == 7


def test_warmup_decay() -> None:
    ema = EMA(nn.Linear(2, 2), 0.999)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(nn.Linear(2, 2))
    assert decays == [1 / 10, 2 / 11, 3 / 12]
    ema.updates = 10_000
    assert ema.current_decay() == 0.999


def test_copy_to_loads_the_averages() -> None:
    module = nn.Linear(3, 2)
    ema = EMA(module, 0.5, warmup=False)
    start = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.mul_(3.0)
    ema.update(module)
    target = nn.Linear(3, 2)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight.detach(), 0.5 * start + 0.5 * 3.0 * start)
