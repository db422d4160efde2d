"""The one training loop, with checkpoints, logging and distributed set-up."""
from .loop import Trainer, TrainingError
from .run import RunDir

__all__ = ["RunDir", "Trainer", "TrainingError"]
