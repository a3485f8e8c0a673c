"""Decision gates (paper 004): early exits on hinge-loss margins, and routing through the tree."""

from nhlcli.gates.fit import GateTraining, default_stages, fit_gates
from nhlcli.gates.gated import GatedModel, GatedOutput, GateSpec, parse_thresholds
from nhlcli.gates.loss import LOSSES, exit_scores, hinge_loss
from nhlcli.gates.stages import StagedNetwork, check_staging
from nhlcli.gates.tune import (
    ExitRecord,
    collect_exits,
    evaluate_gated,
    plot_sweeps,
    simulate,
    sweep,
    target_from,
    tune_thresholds,
)

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
    "evaluate_gated",
    "exit_scores",
    "fit_gates",
    "hinge_loss",
    "parse_thresholds",
    "plot_sweeps",
    "simulate",
    "sweep",
    "target_from",
    "tune_thresholds",
]
