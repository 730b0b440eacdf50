"""The core: interfaces and value types, the diffusion maths, likelihoods, the registry, the
hook specifications and plugin manager, checkpoint files and errors. Imports torch, pydantic,
attrs, pluggy and safetensors, and nothing of :mod:`ddpmkit.app` or :mod:`ddpmkit.tools`."""
