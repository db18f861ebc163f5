"""Training: LightningModule, parameter groups, schedules, crash-safe checkpoint IO, run helpers."""

from .checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from .module import ClassificationModule
from .params import param_groups_weight_decay
from .registry import create_model, register_swconv_models
from .schedules import WarmupCosineLambda, warmup_cosine

__all__ = [
    "AtomicCheckpointIO",
    "atomic_torch_save",
    "ClassificationModule",
    "param_groups_weight_decay",
    "create_model",
    "register_swconv_models",
    "WarmupCosineLambda",
    "warmup_cosine",
]
