"""Training: the loop, checkpoints for resume, and torchrun (DDP) support."""

from nhlcli.training.loop import EpochRecord, TrainConfig, TrainResult, evaluate, train

__all__ = ["EpochRecord", "TrainConfig", "TrainResult", "evaluate", "train"]
