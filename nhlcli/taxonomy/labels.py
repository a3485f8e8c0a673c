"""Class and node names: the small helpers every taxonomy module shares.

They sit below ``tree.py`` so that the modules ``Tree`` itself uses (selection, WordNet
lookup, class lists) can share them without importing the tree back.
"""

from __future__ import annotations

import re

ROOT_ID = "root"


def normalize_label(text: str) -> str:
    """Fold case, underscores, hyphens, slashes and runs of spaces so that names match loosely."""
    return re.sub(r"[\s_\-/]+", " ", text.strip().lower()).strip()
