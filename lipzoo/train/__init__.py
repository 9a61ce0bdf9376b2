"""Training orchestration (``lipzoo train``)."""

from lipzoo.train.config import apply_overrides, resolve_config
from lipzoo.train.trainer import TrainOptions, exponential_decay, train

__all__ = ["TrainOptions", "apply_overrides", "exponential_decay", "resolve_config", "train"]
