"""The NHL model: timm trunk, batched branch levels, leaf heads, experts."""

# The variant a model gets when none is named: as accurate as the paper's shape at a fraction of its
# cost (docs/benchmarks.md, "Lean NHL"). Here, not in registry.py, so the CLI can read it without torch.
DEFAULT_VARIANT = "nhl-scale"
