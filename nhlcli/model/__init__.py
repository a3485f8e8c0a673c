"""The NHL model: timm trunk, batched branch levels, leaf heads, experts."""
