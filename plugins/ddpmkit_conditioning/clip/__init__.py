"""CLIP guidance (GLIDE, Nichol et al. 2021): a noised CLIP, the ``train-clip`` stage that
trains it, and the ``clip`` guidance that follows its image-text gradient."""

from ddpmkit_conditioning.clip.guidance import ClipGuidance, ContrastiveGuidance
from ddpmkit_conditioning.clip.model import NoisedClip, NoisedImageEncoder, clip_loss
from ddpmkit_conditioning.clip.stage import TrainClipStage, load_noised_clip

__all__ = [
    "ClipGuidance",
    "ContrastiveGuidance",
    "NoisedClip",
    "NoisedImageEncoder",
    "TrainClipStage",
    "clip_loss",
    "load_noised_clip",
]
