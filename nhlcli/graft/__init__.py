"""Growing a trained NHL by new classes (``nhl graft``): place them in the tree, train only their
branches beside the frozen model, merge the new rows in; every old logit stays bit-identical."""

from nhlcli.graft.branches import GraftBranches, frozen_forward, merge
from nhlcli.graft.run import GraftRequest, GraftResult, graft_file, graft_model, save_graft
from nhlcli.graft.tree import GrownTree, Placement, grow_tree, place_by_reference, place_under

__all__ = [
    "GraftBranches",
    "GraftRequest",
    "GraftResult",
    "GrownTree",
    "Placement",
    "frozen_forward",
    "graft_file",
    "graft_model",
    "grow_tree",
    "merge",
    "place_by_reference",
    "place_under",
    "save_graft",
]
