"""The conformance tests, one base class per interface.

Subclass one in a test module, name it ``Test...`` and set ``name`` (one component) or
``distribution`` (every component of that kind the distribution registers), and ``params`` or
``params_by_name`` for small instances. The ``ddpmkit`` pytest plugin (loaded automatically
once ddpmkit is installed) runs each test once per component name.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pluggy
import pytest
import torch

from ddpmkit.core import hookspecs, plugin_policy, registry
from ddpmkit.core.data import AttributeReader, Dataset
from ddpmkit.core.errors import ConfigError
from ddpmkit.core.interfaces import (
    Conditioner,
    Denoiser,
    Guidance,
    NoiseSchedule,
    Parameterization,
    Sampler,
)
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.runinfo import RunInfo
from ddpmkit.core.training import (
    Generators,
    LossWeighting,
    ReverseVariance,
    Stage,
    TrainingObjective,
)
from ddpmkit.core.values import Batch, Conditioning, Prediction, SamplerStep
from ddpmkit.core.wiring import BuildContext, CheckContext, RunPipeline
from ddpmkit.testing.reference import (
    GaussianDenoiser,
    IdentityGuidance,
    ReferenceImages,
    ReferenceSchedule,
    ShiftGuidance,
    dumps_toml,
    reference_model,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_context(model: DiffusionModel, dataset: Dataset | None = None) -> CheckContext:
    """A :class:`~ddpmkit.CheckContext` of ``model`` and ``dataset``, with the application's
    service that checks a nested pipeline (imported only when a test asks for it)."""
    from ddpmkit.app.build import check_nested

    return CheckContext(model=model, dataset=dataset, check_pipeline=check_nested)


def pipeline_runner(directory: Path, seed: int = 0) -> RunPipeline:
    """The application's service that runs a nested pipeline in the stage folder
    ``directory`` on the CPU (a :class:`~ddpmkit.StageContext`'s ``run_pipeline``)."""
    from ddpmkit.app.runner import run_nested

    cpu = torch.device("cpu")
    return functools.partial(run_nested, directory=directory, seed=seed, device=cpu, progress=False)


class ComponentContract:
    """What every component must do: build from the registry by name, round-trip its params
    through TOML, refuse unknown keys, document every parameter, declare the plugin API."""

    kind: ClassVar[str] = ""
    interface: ClassVar[type[Any]] = object
    name: ClassVar[str | None] = None
    """The registered name under test (or set ``distribution``)."""
    distribution: ClassVar[str | None] = None
    """Test every component of this kind that this distribution registers."""
    params: ClassVar[Mapping[str, Any]] = {}
    """Parameters of a small instance (all components, unless ``params_by_name`` has one)."""
    params_by_name: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @classmethod
    def component_names(cls) -> list[str]:
        """The names this class tests: ``name``, or every ``distribution`` record of ``kind``."""
        if cls.name is not None:
            return [cls.name]
        if cls.distribution is None:
            raise TypeError(f"{cls.__name__}: set `name` or `distribution`")
        dist = plugin_policy.normalize(cls.distribution)
        return sorted(
            {
                r.name
                for r in registry.records(cls.kind)
                if plugin_policy.normalize(r.distribution) == dist
            }
        )

    def params_for(self, name: str, tmp_path: Path) -> dict[str, Any]:
        """Parameters of the instance under test; override to create files in ``tmp_path``."""
        return dict(self.params_by_name.get(name, self.params))

    def build(self, name: str, tmp_path: Path, **overrides: Any) -> Any:
        """``ddpmkit.create(kind, name, **params)``, the same path a pipeline takes."""
        return registry.create(self.kind, name, **{**self.params_for(name, tmp_path), **overrides})

    # -- the tests every kind shares ---------------------------------------------------------

    def test_builds_from_registry(self, component_name: str, tmp_path: Path) -> None:
        component: Any = self.build(component_name, tmp_path)
        cls = registry.load(self.kind, component_name)
        assert isinstance(component, self.interface), f"not a {self.interface.__name__}"
        assert isinstance(component.params, cls.Params)

    def test_params_round_trip_through_toml(self, component_name: str, tmp_path: Path) -> None:
        component = self.build(component_name, tmp_path)
        text = dumps_toml(component.params.model_dump(mode="json"))
        again = registry.create(self.kind, component_name, **tomllib.loads(text))
        assert again.params == component.params, f"TOML:\n{text}"

    def test_unknown_key_is_refused(self, component_name: str, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="no_such_parameter: unknown key"):
            self.build(component_name, tmp_path, no_such_parameter=1)

    def test_every_parameter_is_documented(self, component_name: str) -> None:
        params_model = registry.load(self.kind, component_name).Params
        missing = [k for k, f in params_model.model_fields.items() if not f.description]
        assert not missing, f"{params_model.__name__} fields without a description: {missing}"

    def test_wire_answers_only_its_params(self, component_name: str, tmp_path: Path) -> None:
        cls = registry.load(self.kind, component_name)
        context = BuildContext().with_data(ReferenceImages()).with_schedule(ReferenceSchedule())
        wired = cls.wire(context)
        assert isinstance(wired, dict), f"wire() returned {type(wired).__name__}, not a dict"
        unknown = sorted(set(wired) - set(cls.Params.model_fields))
        assert not unknown, f"wire() answered keys {cls.Params.__name__} lacks: {unknown}"
        # what it answers, with the instance's own params over it, is valid
        cls.Params.model_validate({**wired, **self.params_for(component_name, tmp_path)})

    def test_check_takes_a_check_context(self, component_name: str, tmp_path: Path) -> None:
        component = self.build(component_name, tmp_path)
        # refusing the kit's model or data is a component's right; crashing is not
        with contextlib.suppress(ConfigError):
            component.check(check_context(reference_model(), ReferenceImages()))

    def test_declares_a_compatible_plugin_api(self, component_name: str) -> None:
        rec = registry.record(self.kind, component_name)
        if rec.entry_point is None:
            pytest.skip("registered in-process, not through an entry point")
        declared = plugin_policy.declared_api(rec.entry_point.module)
        assert declared is not None, f"{rec.entry_point.module} lacks DDPMKIT_PLUGIN_API"
        assert declared.split(".")[0] == plugin_policy.PLUGIN_API_VERSION.split(".")[0]


class ScheduleContract(ComponentContract):
    """Schedules: abar of shape ``(T,)``, float64, strictly decreasing in (0, 1]."""

    kind = "schedule"
    interface = NoiseSchedule

    def test_alphas_cumprod(self, component_name: str, tmp_path: Path) -> None:
        schedule: NoiseSchedule = self.build(component_name, tmp_path)
        abar = schedule.alphas_cumprod
        assert abar.dtype == torch.float64 and abar.ndim == 1 and abar.numel() == schedule.T
        assert bool((abar > 0).all() and (abar <= 1).all()), "abar must lie in (0, 1]"
        assert bool((abar[1:] < abar[:-1]).all()), "abar must decrease strictly"
        if "timesteps" in type(schedule.params).model_fields:
            assert schedule.params.timesteps == schedule.T  # type: ignore[attr-defined]

    def test_derived_quantities(self, component_name: str, tmp_path: Path) -> None:
        schedule: NoiseSchedule = self.build(component_name, tmp_path)
        betas = schedule.betas
        assert betas.shape == schedule.alphas_cumprod.shape
        assert bool((betas > 0).all() and (betas <= 1).all()), "beta_t must lie in (0, 1]"
        # abar_t = prod (1 - beta_s) (Ho et al. eq. 4), to float64 rounding
        torch.testing.assert_close(torch.cumprod(1 - betas, 0), schedule.alphas_cumprod)
        assert bool((schedule.log_snr[1:] < schedule.log_snr[:-1]).all())


class ParameterizationContract(ComponentContract):
    """Parameterizations: target and conversion are inverse; the eps-error factor is exact."""

    kind = "parameterization"
    interface = Parameterization

    @staticmethod
    def _draw() -> tuple[torch.Tensor, ...]:
        g = _seeded(0)
        x0 = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
        eps = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
        abar = torch.tensor([0.999, 0.9, 0.6, 0.3, 0.05, 1e-3], dtype=torch.float64)
        alpha, sigma = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
        return x0, eps, alpha, sigma

    def test_target_round_trips(self, component_name: str, tmp_path: Path) -> None:
        p: Parameterization = self.build(component_name, tmp_path)
        x0, eps, alpha, sigma = self._draw()
        x_t = alpha * x0 + sigma * eps
        eps_back, x0_back = p.to_eps_x0(p.target(x0, eps, alpha, sigma), x_t, alpha, sigma)
        # float64 throughout: only rounding separates them (1e-10 >> 1e-16 * 1/sigma_min)
        torch.testing.assert_close(eps_back, eps, atol=1e-10, rtol=0)
        torch.testing.assert_close(x0_back, x0, atol=1e-10, rtol=0)

    def test_eps_error_factor(self, component_name: str, tmp_path: Path) -> None:
        p: Parameterization = self.build(component_name, tmp_path)
        x0, eps, alpha, sigma = self._draw()
        x_t = alpha * x0 + sigma * eps
        target = p.target(x0, eps, alpha, sigma)
        error = 1e-3 * torch.randn(target.shape, generator=_seeded(1), dtype=torch.float64)
        eps_hat, _ = p.to_eps_x0(target + error, x_t, alpha, sigma)
        f = p.eps_error_factor(alpha, sigma).expand(-1, 1, 1, 1).flatten()
        lhs = ((eps_hat - eps) ** 2).flatten(1).sum(1)
        torch.testing.assert_close(lhs, f * (error**2).flatten(1).sum(1), rtol=1e-8, atol=0)

    def test_keeps_dtype_and_shape(self, component_name: str, tmp_path: Path) -> None:
        p: Parameterization = self.build(component_name, tmp_path)
        x0, eps, alpha, sigma = (v.float() for v in self._draw())
        out = p.target(x0, eps, alpha, sigma)
        assert out.shape == x0.shape and out.dtype == torch.float32
        e, x = p.to_eps_x0(out, alpha * x0 + sigma * eps, alpha, sigma)
        assert e.shape == x.shape == x0.shape and e.dtype == x.dtype == torch.float32


class SamplerContract(ComponentContract):
    """Samplers on the exact denoiser of Gaussian data: shapes, seeded determinism, the same
    samples under every parameterization, guidance honoured, callbacks in order."""

    kind = "sampler"
    interface = Sampler
    shapes: ClassVar[tuple[tuple[int, ...], ...]] = ((3, 2, 4, 4), (5, 2))
    """Batch shapes sampled: images and vectors (the reference model has 2 channels)."""

    def model_for(
        self, name: str, parameterization: str = "eps", shape: tuple[int, ...] = (1, 2)
    ) -> DiffusionModel:
        """The model sampled (default: the kit's reference model). Override for a sampler
        that needs a particular denoiser; the same arguments must give the same model."""
        return reference_model(parameterization, channels=shape[1])

    def shapes_for(self, name: str) -> tuple[tuple[int, ...], ...]:
        """The batch shapes sampled with ``name`` (default: :attr:`shapes`). Override for a
        sampler that only makes some shapes (one that completes a data set's images)."""
        return self.shapes

    def _sample(self, sampler: Sampler, model: Any, shape: tuple[int, ...], **kw: Any) -> Any:
        sampler.check(check_context(model))
        return sampler.sample(model, shape, generator=_seeded(kw.pop("seed", 0)), **kw)

    def test_shapes_and_finite(self, component_name: str, tmp_path: Path) -> None:
        sampler = self.build(component_name, tmp_path)
        for shape in self.shapes_for(component_name):
            x = self._sample(sampler, self.model_for(component_name, shape=shape), shape)
            assert x.shape == shape and x.dtype == torch.float32
            assert bool(torch.isfinite(x).all())

    def test_seeded_determinism(self, component_name: str, tmp_path: Path) -> None:
        sampler = self.build(component_name, tmp_path)
        shape = self.shapes_for(component_name)[0]
        model = self.model_for(component_name, shape=shape)
        a = self._sample(sampler, model, shape, seed=1)
        b = self._sample(sampler, model, shape, seed=1)
        c = self._sample(sampler, model, shape, seed=2)
        assert torch.equal(a, b), "one seed must give one sample"
        assert not torch.equal(a, c), "another seed must give another sample"

    def test_every_parameterization_gives_the_same_samples(
        self, component_name: str, tmp_path: Path
    ) -> None:
        sampler = self.build(component_name, tmp_path)
        shape = self.shapes_for(component_name)[0]
        results = {
            name: self._sample(sampler, self.model_for(component_name, name, shape), shape)
            for name in registry.names("parameterization")
            if not _refused("parameterization", name)
        }
        first = next(iter(results))
        for name, x in results.items():
            assert x.shape == shape and bool(torch.isfinite(x).all()), name
            if isinstance(self.model_for(component_name, name, shape).denoiser, GaussianDenoiser):
                # the reference denoiser predicts the same eps and x0 whatever it outputs; only
                # float32 conversions differ (~1e-6 / sigma_min ~ 3e-5, amplified per step)
                torch.testing.assert_close(x, results[first], atol=1e-3, rtol=0, msg=name)

    def test_guidance_is_honoured(self, component_name: str, tmp_path: Path) -> None:
        sampler = self.build(component_name, tmp_path)
        shape = self.shapes_for(component_name)[0]
        model = self.model_for(component_name, shape=shape)
        plain = self._sample(sampler, model, shape)
        identity = IdentityGuidance()
        same = self._sample(sampler, model, shape, guidance=identity)
        assert identity.calls > 0, "the sampler never called the guidance"
        assert torch.equal(plain, same), "a guidance that changes nothing changed the samples"
        shifted = self._sample(sampler, model, shape, guidance=ShiftGuidance(0.5))
        assert float((shifted - plain).mean()) > 0.05, "x0 + 0.5 did not move the samples up"
        nested = [IdentityGuidance(), ShiftGuidance(0.5)]
        torch.testing.assert_close(self._sample(sampler, model, shape, guidance=nested), shifted)

    def test_callback_reports_each_step(self, component_name: str, tmp_path: Path) -> None:
        sampler = self.build(component_name, tmp_path)
        steps: list[SamplerStep] = []
        model = self.model_for(component_name, shape=self.shapes_for(component_name)[0])
        x = self._sample(sampler, model, self.shapes_for(component_name)[0], callback=steps.append)
        assert steps, "the callback was never called"
        assert [s.index for s in steps] == list(range(steps[0].total))
        assert torch.equal(steps[-1].x, x)

    def test_runs_under_inference_mode(self, component_name: str, tmp_path: Path) -> None:
        sampler = self.build(component_name, tmp_path)
        model = self.model_for(component_name, shape=self.shapes_for(component_name)[0])
        with torch.inference_mode():
            x = self._sample(sampler, model, self.shapes_for(component_name)[0])
        assert torch.equal(x, self._sample(sampler, model, self.shapes_for(component_name)[0]))


def _refused(kind: str, name: str) -> bool:
    """Whether the plugin policy keeps every registration of ``name`` from loading."""
    policy = plugin_policy.current()
    return all(
        policy.refusal(r.distribution, r.name) for r in registry.records(kind) if r.name == name
    )


class DenoiserContract(ComponentContract):
    """Denoisers: output shape, dtype and device follow the input; bf16 works; conditioning
    fields it was not built for raise ``ValueError``; gradients reach every parameter."""

    kind = "denoiser"
    interface = Denoiser
    example_shape: ClassVar[tuple[int, ...] | None] = None
    """Shape of one input example, e.g. ``(3, 16, 16)``; default ``(in_channels, 8, 8)``."""
    example_shape_by_name: ClassVar[Mapping[str, tuple[int, ...]]] = {}
    unconditional: ClassVar[bool] = True
    """Whether the instance under test was built without conditioning inputs."""

    def _denoiser(self, name: str, tmp_path: Path) -> Denoiser:
        torch.manual_seed(0)
        denoiser: Denoiser = self.build(name, tmp_path)
        schedule = ReferenceSchedule()
        denoiser.bind(schedule, registry.create("parameterization", "eps"))
        with torch.no_grad():  # off the initialisation: zero-initialised output layers would
            for p in denoiser.parameters():  # make every output 0 and every check trivial
                p.add_(0.05 * torch.randn(p.shape, generator=_seeded(1)).to(p))
        return denoiser.eval()

    def _input(self, name: str, denoiser: Denoiser, batch: int = 2) -> tuple[torch.Tensor, ...]:
        shape = self.example_shape_by_name.get(name, self.example_shape)
        if shape is None:
            shape = (denoiser.in_channels, 8, 8)
        x = torch.randn(batch, *shape, generator=_seeded(0))
        t = torch.arange(batch) * (ReferenceSchedule().T - 1) // max(batch - 1, 1)
        return x, t

    def test_output_shape_and_dtype(self, component_name: str, tmp_path: Path) -> None:
        denoiser = self._denoiser(component_name, tmp_path)
        x, t = self._input(component_name, denoiser)
        with torch.no_grad():
            torch.manual_seed(0)
            out = denoiser(x, t, None)
        assert out.shape == (x.shape[0], denoiser.out_channels, *x.shape[2:])
        assert out.dtype == x.dtype and out.device == x.device
        assert bool(torch.isfinite(out).all())
        assert float(out.abs().max()) > 0, "an all-zero output tests nothing"
        with torch.no_grad():
            torch.manual_seed(0)  # a denoiser may draw from the global RNG (a latent z)
            again = denoiser(x, t, None)
        assert torch.equal(out, again), "in eval mode, one global seed must give one output"

    def test_bfloat16(self, component_name: str, tmp_path: Path) -> None:
        denoiser = self._denoiser(component_name, tmp_path)
        x, t = self._input(component_name, denoiser)
        with torch.no_grad():
            torch.manual_seed(0)
            reference = denoiser(x, t, None)
            torch.manual_seed(0)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast = denoiser(x, t, None)
            torch.manual_seed(0)
            low = denoiser.to(torch.bfloat16)(x.bfloat16(), t, None)
        assert low.dtype == torch.bfloat16 and bool(torch.isfinite(low).all())
        assert bool(torch.isfinite(autocast).all()) and autocast.shape == reference.shape
        # bf16 keeps 8 bits of mantissa: outputs of O(1) agree to a few 1e-2
        scale = float(reference.abs().max()) + 1.0
        torch.testing.assert_close(low.float(), reference, atol=0.1 * scale, rtol=0.1)

    def test_follows_the_input_device(self, component_name: str, tmp_path: Path) -> None:
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        denoiser = self._denoiser(component_name, tmp_path).cuda()
        x, t = self._input(component_name, denoiser)
        with torch.no_grad():
            out = denoiser(x.cuda(), t.cuda(), None)
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), denoiser.cpu()(x, t, None), atol=1e-3, rtol=1e-3)

    def test_refuses_conditioning_it_was_not_built_for(
        self, component_name: str, tmp_path: Path
    ) -> None:
        if not self.unconditional:
            pytest.skip("the instance under test is conditional")
        denoiser = self._denoiser(component_name, tmp_path)
        x, t = self._input(component_name, denoiser)
        with pytest.raises(ValueError):
            denoiser(x, t, Conditioning(embedding=torch.zeros(x.shape[0], 7)))

    def test_gradients_reach_every_parameter(self, component_name: str, tmp_path: Path) -> None:
        denoiser = self._denoiser(component_name, tmp_path).train()
        params = [p for p in denoiser.parameters() if p.requires_grad]
        if not params:
            pytest.skip("no trainable parameters")
        x, t = self._input(component_name, denoiser)
        denoiser(x, t, None).square().mean().backward()
        missing = [n for n, p in denoiser.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without a gradient: {missing}"


class ConditionerContract(ComponentContract):
    """Conditioners: a null condition of the declared dims; encoded conditions match it."""

    kind = "conditioner"
    interface = Conditioner

    def raw_conditions(self, name: str, batch: int) -> Any:
        """A batch of raw conditions for ``forward`` (override: labels, images, captions...)."""
        raise NotImplementedError(f"{type(self).__name__} must define raw_conditions()")

    def build(self, name: str, tmp_path: Path, **overrides: Any) -> Any:
        """The conditioner, bound (:meth:`Conditioner.bind`) to a model of the reference
        schedule, as a pipeline's :class:`~ddpmkit.DiffusionModel` binds it."""
        conditioner = super().build(name, tmp_path, **overrides)
        DiffusionModel(
            ReferenceSchedule(),
            GaussianDenoiser(2),
            registry.create("parameterization", "eps"),
            conditioner=conditioner,
        )
        return conditioner

    @staticmethod
    def _check(c: Conditioning, conditioner: Conditioner, batch: int) -> None:
        fields = {
            "channels": (c.channels, conditioner.extra_channels),
            "embedding": (c.embedding, conditioner.embedding_dim),
            "context": (c.context, conditioner.context_dim),
        }
        for field, (value, dim) in fields.items():
            if dim == 0:
                assert value is None, f"{field} is produced but its dim is declared 0"
                continue
            assert value is not None, f"{field} dim is {dim} but it is not produced"
            assert value.shape[0] == batch and value.shape[1 if field != "context" else 2] == dim
            assert bool(torch.isfinite(value).all())

    def test_null_condition(self, component_name: str, tmp_path: Path) -> None:
        conditioner: Conditioner = self.build(component_name, tmp_path)
        null = conditioner.null(3, torch.device("cpu"))
        self._check(null, conditioner, 3)

    def test_encoded_conditions_match_the_declared_dims(
        self, component_name: str, tmp_path: Path
    ) -> None:
        conditioner: Conditioner = self.build(component_name, tmp_path)
        encoded = conditioner(self.raw_conditions(component_name, 3))
        self._check(encoded, conditioner, 3)


class GuidanceContract(ComponentContract):
    """Guidance on the reference model: a consistent, deterministic prediction of the right
    shape, also under ``torch.inference_mode``, and usable by a sampler."""

    kind = "guidance"
    interface = Guidance

    def condition(self, name: str, batch: int) -> Conditioning | None:
        """The condition passed to ``guide`` (override for guidance that needs one)."""
        return None

    def _call(
        self, guidance: Guidance, name: str, inference: bool = False
    ) -> tuple[Prediction, torch.Tensor, Any]:
        """Guide a prediction of the reference model; with ``inference``, the sampler's side
        (x_t, t and the call) runs under ``torch.inference_mode``, as a fast sampler's may."""
        model = reference_model()
        cond = self.condition(name, 4)
        with torch.inference_mode(inference):
            x = torch.randn(4, 2, 4, 4, generator=_seeded(0))
            t = torch.tensor([0, 5, 12, 19])
            return guidance.guide(model, model.predict, x, t, cond), x, (model, t)

    def test_prediction_shape_and_consistency(self, component_name: str, tmp_path: Path) -> None:
        guidance: Guidance = self.build(component_name, tmp_path)
        pred, x, (model, t) = self._call(guidance, component_name)
        assert pred.eps.shape == pred.x0.shape == x.shape
        assert bool(torch.isfinite(pred.eps).all() and torch.isfinite(pred.x0).all())
        alpha, sigma = model.alpha_sigma(t, x.ndim)
        # x_t = alpha x0 + sigma eps (Ho et al. eq. 4) must hold for the guided pair too
        torch.testing.assert_close(alpha * pred.x0 + sigma * pred.eps, x, atol=1e-4, rtol=1e-4)

    def test_deterministic_and_inference_mode(self, component_name: str, tmp_path: Path) -> None:
        guidance: Guidance = self.build(component_name, tmp_path)
        first, _, _ = self._call(guidance, component_name)
        again, _, _ = self._call(guidance, component_name, inference=True)
        torch.testing.assert_close(again.eps, first.eps, atol=1e-6, rtol=1e-6)

    def test_a_sampler_can_use_it(self, component_name: str, tmp_path: Path) -> None:
        guidance: Guidance = self.build(component_name, tmp_path)
        sampler = registry.create("sampler", "ddim", steps=5)
        cond = self.condition(component_name, 3)
        x = sampler.sample(
            reference_model(), (3, 2, 4, 4), guidance=guidance, cond=cond, generator=_seeded(0)
        )
        assert x.shape == (3, 2, 4, 4) and bool(torch.isfinite(x).all())


class DatasetContract(ComponentContract):
    """Data sets: examples of the declared shape in [-1, 1], labels in range, batches that
    stack examples, the same data from the same params."""

    kind = "dataset"
    interface = Dataset

    def test_examples(self, component_name: str, tmp_path: Path) -> None:
        data: Dataset = self.build(component_name, tmp_path)
        assert len(data) >= 1
        for i in sorted({0, len(data) - 1}):
            example = data[i]
            assert tuple(example.image.shape) == tuple(data.shape)
            assert example.image.is_floating_point()
            assert float(example.image.min()) >= -1 and float(example.image.max()) <= 1
            assert -1 <= example.label < max(data.num_classes, 0) or example.label == -1
        assert data.shape[0] == data.channels
        with pytest.raises(IndexError):
            data[len(data)]

    def test_batches_stack_examples(self, component_name: str, tmp_path: Path) -> None:
        data: Dataset = self.build(component_name, tmp_path)
        indices = [len(data) - 1, 0]
        batch = data.batch(indices)
        assert batch.images.shape == (2, *data.shape)
        for row, i in enumerate(indices):
            torch.testing.assert_close(batch.images[row], data[i].image)
            assert int(batch.labels[row]) == data[i].label

    def test_same_params_same_data(self, component_name: str, tmp_path: Path) -> None:
        a: Dataset = self.build(component_name, tmp_path)
        b: Dataset = self.build(component_name, tmp_path)
        assert torch.equal(a[0].image, b[0].image) and len(a) == len(b)


class AttributeReaderContract(ComponentContract):
    """Attribute readers: bound to the data set whose name they are registered under, they
    read one entry per image (a dict of strings, or ``None``), the same readings twice, and the
    data's own examples as their labels and captions say (on at least ``agreement`` of them)."""

    kind = "attribute-reader"
    interface = AttributeReader
    data_params: ClassVar[Mapping[str, Any]] = {}
    """Parameters of a small instance of the data set the reader reads."""
    agreement: ClassVar[float] = 0.9
    """The least fraction of the data's own examples that must read as their labels and
    captions ask (those that ask for nothing are not counted)."""

    def dataset_for(self, name: str, tmp_path: Path) -> Dataset:
        """The data set the reader reads: the ``dataset`` registered as ``name``, built with
        ``data_params`` (override to create files in ``tmp_path``)."""
        return registry.create("dataset", name, **self.data_params)

    def _bound(self, name: str, tmp_path: Path) -> tuple[AttributeReader, Batch]:
        reader: AttributeReader = self.build(name, tmp_path)
        data = self.dataset_for(name, tmp_path)
        reader.bind(data)
        return reader, data.batch(list(range(min(len(data), 8))))

    def test_reads_one_entry_per_image(self, component_name: str, tmp_path: Path) -> None:
        reader, batch = self._bound(component_name, tmp_path)
        readings = reader.read_attributes(batch.images)
        assert len(readings) == len(batch.images)
        for reading in readings:
            assert reading is None or all(
                isinstance(k, str) and isinstance(v, str) for k, v in reading.items()
            ), reading
        assert reader.read_attributes(batch.images) == readings, "not deterministic"

    def test_reads_the_data_as_labels_and_captions_ask(
        self, component_name: str, tmp_path: Path
    ) -> None:
        reader, batch = self._bound(component_name, tmp_path)
        readings = reader.read_attributes(batch.images)
        checked = []
        for reading, label, caption in zip(
            readings, batch.labels.tolist(), batch.captions, strict=True
        ):
            asked: dict[str, str] = {}
            if label >= 0:
                asked.update(reader.label_attributes(label) or {})
            asked.update(reader.caption_attributes(caption) or {})
            if asked:
                checked.append(reading is not None and reading.items() >= asked.items())
        if not checked:
            pytest.skip("the data's labels and captions ask for no attribute")
        assert sum(checked) >= self.agreement * len(checked), f"{sum(checked)} of {len(checked)}"


class VarianceContract(ComponentContract):
    """Reverse variances: finite log sigma^2, broadcastable, between the two fixed bounds
    log beta~ and log beta (Ho et al. section 3.2; Bao et al. 2022 show the optimum is)."""

    kind = "variance"
    interface = ReverseVariance
    bounded: ClassVar[bool] = True

    def test_log_variance(self, component_name: str, tmp_path: Path) -> None:
        variance: ReverseVariance = self.build(component_name, tmp_path)
        model = reference_model(variance=variance)
        data = [reference_data_batch() for _ in range(2)]
        variance.fit(model, data)
        x = torch.randn(4, 2, 4, 4, generator=_seeded(0))
        t = torch.tensor([1, 5, 12, 19])
        s = t - 1
        with torch.no_grad():
            out = model.denoiser(x, t, None)
        extra = out[:, 2:] if variance.output_multiplier > 1 else None
        log_var = variance.log_variance(model, t, s, extra, x)
        assert torch.broadcast_shapes(log_var.shape, x.shape) == x.shape
        assert bool(torch.isfinite(log_var).all())
        if self.bounded:
            upper, lower = model.step_log_variances(t, s)
            flat = log_var.expand_as(x).flatten(1).to(torch.float64)
            # float32 rounding of the logs: 1e-5
            assert bool((flat <= upper[:, None] + 1e-5).all()), "above log beta"
            assert bool((flat >= lower[:, None] - 1e-5).all()), "below log beta~"


def reference_data_batch() -> torch.Tensor:
    """A batch of the reference data, x_0 ~ N(0, 0.5^2 I) clipped to [-1, 1] as images are."""
    return (0.5 * torch.randn(8, 2, 4, 4, generator=_seeded(3))).clamp(-1, 1)


class WeightingContract(ComponentContract):
    """Loss weightings: finite non-negative weights, indices in range with positive
    corrections, and a state that survives a checkpoint."""

    kind = "weighting"
    interface = LossWeighting

    def test_weights_and_draws(self, component_name: str, tmp_path: Path) -> None:
        weighting: LossWeighting = self.build(component_name, tmp_path)
        model = reference_model()
        weighting.check(check_context(model))
        t, correction = weighting.sample_t(64, model, _seeded(0))
        assert t.shape == correction.shape == (64,) and t.dtype == torch.long
        assert bool(((t >= 0) & (t < model.T)).all())
        assert bool(torch.isfinite(correction).all() and (correction > 0).all())
        w = weighting.weights(t, model)
        assert w.shape == (64,) and bool(torch.isfinite(w).all() and (w >= 0).all())

    def test_state_survives_a_checkpoint(self, component_name: str, tmp_path: Path) -> None:
        weighting: LossWeighting = self.build(component_name, tmp_path)
        model = reference_model()
        g = _seeded(1)
        for _ in range(30):
            t, _ = weighting.sample_t(16, model, g)
            weighting.observe(t, torch.rand(16, generator=g))
        state = {k: v.clone() for k, v in weighting.state_dict().items()}
        fresh: LossWeighting = self.build(component_name, tmp_path)
        fresh.load_state_dict(copy.deepcopy(state))
        assert state.keys() == fresh.state_dict().keys()
        for key, value in state.items():
            assert torch.equal(fresh.state_dict()[key], value), key
        t = torch.arange(model.T)
        assert torch.equal(fresh.weights(t, model), weighting.weights(t, model))


class ObjectiveContract(ComponentContract):
    """Training objectives: after ``setup``, draws of one row per example (what a process
    training on a shard of the batch keeps), a finite scalar loss whose gradient reaches the
    model, the same loss from the same seeds, finite metrics, and a state that survives a
    checkpoint."""

    kind = "objective"
    interface = TrainingObjective
    data_shape: ClassVar[tuple[int, ...]] = (2, 4, 4)

    def model_for(self, name: str) -> DiffusionModel:
        """The model trained (default: the reference model, whose denoiser has one trainable
        gain). Override for an objective that needs a particular denoiser; build it from a
        fixed seed, as each test builds it twice and compares."""
        return reference_model()

    def _setup(self, name: str, tmp_path: Path) -> tuple[TrainingObjective, DiffusionModel]:
        torch.manual_seed(0)
        objective: TrainingObjective = self.build(name, tmp_path)
        model = self.model_for(name)
        objective.check(check_context(model))
        torch.manual_seed(1)
        objective.setup(model, self.data_shape)
        return objective, model

    def _data(self) -> torch.Tensor:
        return (0.5 * torch.randn(6, *self.data_shape, generator=_seeded(4))).clamp(-1, 1)

    def test_loss_trains_the_model(self, component_name: str, tmp_path: Path) -> None:
        objective, model = self._setup(component_name, tmp_path)
        loss = objective.batch_loss(model, self._data(), generator=_seeded(0))
        assert loss.ndim == 0 and bool(torch.isfinite(loss)) and loss.requires_grad
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads), "no gradient reaches it"
        metrics = objective.metrics()
        assert all(isinstance(v, float) for v in metrics.values()), metrics

    def test_draws_have_one_row_per_example(self, component_name: str, tmp_path: Path) -> None:
        objective, model = self._setup(component_name, tmp_path)
        generators = Generators(indices=_seeded(0), noise=_seeded(1))
        draws = objective.draw(model, 6, self.data_shape, generators)
        shapes = {key: tuple(value.shape) for key, value in draws.items()}
        assert shapes and all(shape[:1] == (6,) for shape in shapes.values()), shapes

    def test_same_seeds_same_loss(self, component_name: str, tmp_path: Path) -> None:
        values = []
        for _ in range(2):
            objective, model = self._setup(component_name, tmp_path)
            loss = objective.batch_loss(model, self._data(), generator=_seeded(0))
            values.append(float(loss.detach()))
        assert values[0] == values[1]

    def test_state_survives_a_checkpoint(self, component_name: str, tmp_path: Path) -> None:
        objective, model = self._setup(component_name, tmp_path)
        objective.batch_loss(model, self._data(), generator=_seeded(0)).backward()
        state = {k: v.detach().clone() for k, v in objective.state_dict().items()}
        fresh, _ = self._setup(component_name, tmp_path)
        fresh.load_state_dict(copy.deepcopy(state))
        again = fresh.state_dict()
        assert state.keys() == again.keys()
        for key, value in state.items():
            assert torch.equal(again[key], value), key


class StageContract(ComponentContract):
    """Stages: accept the reference model and data, write their outputs into their own folder
    and nowhere else, and write the same tensors from the same seed."""

    kind = "stage"
    interface = Stage

    def model_for(self, name: str) -> DiffusionModel:
        """The pipeline model the stage runs beside (default: the reference model)."""
        return reference_model()

    def dataset_for(self, name: str) -> Dataset:
        """The data the stage runs on (default: :class:`ReferenceImages`, two classes of
        ``(2, 4, 4)`` images with captions)."""
        return ReferenceImages()

    def _run(self, name: str, tmp_path: Path, folder: str) -> Path:
        # the application's context: its fit trains in the trainer's loop
        from ddpmkit.app.stages import stage_context

        stage: Stage = self.build(name, tmp_path)
        model, data = self.model_for(name), self.dataset_for(name)
        stage.check(attrs.evolve(check_context(model, data), key="stages.under-test"))
        directory = tmp_path / folder / "stages" / "under-test"
        directory.mkdir(parents=True)
        torch.manual_seed(0)
        runner = pipeline_runner(directory)
        stage.run(
            stage_context(
                "under-test", directory, model, data, torch.device("cpu"), 0, False, runner
            )
        )
        return directory

    def test_writes_into_its_folder_only(self, component_name: str, tmp_path: Path) -> None:
        directory = self._run(component_name, tmp_path, "run")
        written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
        assert written, "the stage wrote nothing"
        outside = [p for p in written if directory not in p.parents]
        assert not outside, f"written outside the stage's folder: {outside}"

    def test_same_seed_same_outputs(self, component_name: str, tmp_path: Path) -> None:
        from safetensors.torch import load_file

        first = self._run(component_name, tmp_path, "a")
        second = self._run(component_name, tmp_path, "b")
        files = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
        assert files == sorted(p.relative_to(second) for p in second.rglob("*.safetensors"))
        for relative in files:
            a, b = load_file(first / relative), load_file(second / relative)
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), f"{relative}: {key} differs"


class HookPluginContract:
    """Hook plugins: every ``@hookimpl`` matches a hook specification, and a whole run's events
    go through it without error. Set ``name`` (its ``ddpmkit.plugins`` entry point) or
    ``plugin`` (the module or object). Override :meth:`check_run` to inspect what it wrote."""

    name: ClassVar[str | None] = None
    plugin: ClassVar[Any] = None

    def _plugin(self) -> Any:
        if self.plugin is not None:
            return self.plugin
        import importlib.metadata as md

        for ep in md.entry_points(group="ddpmkit.plugins"):
            if ep.name == self.name:
                return ep.load()
        raise LookupError(f"no ddpmkit.plugins entry point named {self.name!r}")

    def test_declares_a_compatible_plugin_api(self) -> None:
        plugin = self._plugin()
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else plugin.__module__
        declared = plugin_policy.declared_api(module)
        assert declared is not None, f"{module} lacks DDPMKIT_PLUGIN_API"
        assert declared.split(".")[0] == plugin_policy.PLUGIN_API_VERSION.split(".")[0]

    def test_hooks_match_the_specifications(self) -> None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(self._plugin())  # raises when an implementation's arguments do not fit
        pm.check_pending()  # raises when an implementation has no specification

    def run_events(self, pm: pluggy.PluginManager, run: RunInfo) -> None:
        """A short run's events, in the order a pipeline sends them."""
        hook = pm.hook
        hook.ddpmkit_run_start(run=run)
        for step in (2, 4):
            hook.ddpmkit_train_metrics(run=run, step=step, metrics={"loss": 1.0 / step})
        checkpoint = run.directory / "checkpoints" / "step-4.safetensors"
        hook.ddpmkit_checkpoint_saved(run=run, step=4, path=checkpoint)
        hook.ddpmkit_samples_written(run=run, path=run.directory / "samples.png", count=5)
        hook.ddpmkit_run_end(run=run, status="completed")

    def test_a_run_goes_through(self, tmp_path: Path) -> None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(self._plugin())
        run = RunInfo(directory=tmp_path, config={"seed": 0}, seed=0)
        self.run_events(pm, run)
        self.check_run(run)

    def check_run(self, run: RunInfo) -> None:
        """What the plugin should have done after :meth:`run_events` (default: nothing)."""


def contract_classes() -> Iterable[type[ComponentContract]]:
    """The base class of each component kind."""
    return (
        ScheduleContract,
        ParameterizationContract,
        SamplerContract,
        DenoiserContract,
        ConditionerContract,
        GuidanceContract,
        DatasetContract,
        AttributeReaderContract,
        VarianceContract,
        WeightingContract,
        ObjectiveContract,
        StageContract,
    )
