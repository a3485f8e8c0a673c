"""Training: the loop and checkpoints for resume (torchrun support is in ``nhlcli.distributed``)."""

from nhlcli.training.loop import EpochRecord, TrainConfig, TrainResult, train

__all__ = ["EpochRecord", "TrainConfig", "TrainResult", "train"]
