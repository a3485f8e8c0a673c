"""Training: the loop and checkpoints for resume (torchrun support is in ``nhlcli.distributed``)."""

from nhlcli.training.loop import EpochRecord, TrainConfig, TrainResult, seed_everything, train

__all__ = ["EpochRecord", "TrainConfig", "TrainResult", "seed_everything", "train"]
