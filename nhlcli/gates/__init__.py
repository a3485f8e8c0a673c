"""Decision gates (paper 004): early exits on hinge-loss margins, and routing through the tree."""

from nhlcli.gates.fit import GateTraining, default_stages, fit_gates
from nhlcli.gates.loss import LOSSES, exit_scores, hinge_loss
from nhlcli.gates.tune import (
    ExitRecord,
    collect_exits,
    plot_sweeps,
    simulate,
    sweep,
    target_from,
    tune_thresholds,
)
from nhlcli.model.gated import GatedModel, GatedOutput, GateSpec
from nhlcli.model.stages import StagedNetwork, check_staging

__all__ = [
    "LOSSES",
    "ExitRecord",
    "GateSpec",
    "GateTraining",
    "GatedModel",
    "GatedOutput",
    "StagedNetwork",
    "check_staging",
    "collect_exits",
    "default_stages",
    "exit_scores",
    "fit_gates",
    "hinge_loss",
    "plot_sweeps",
    "simulate",
    "sweep",
    "target_from",
    "tune_thresholds",
]
