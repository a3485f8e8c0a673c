"""What long library work reports as it goes, so that the CLI (or a notebook) draws it.

The library never draws a progress bar itself: it takes an object with these methods and calls
them; ``nhlcli/cli/common.py`` implements both with rich. ``None`` means silence.
"""

from __future__ import annotations

from typing import Any, Protocol


class ImageProgress(Protocol):
    """Progress over images (evaluation, gates, inference)."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, images: int) -> None: ...


class TrainingProgress(Protocol):
    """Progress of a training run: steps within epochs, and each finished epoch."""

    def begin(self, epochs: int, steps: int, start_epoch: int, held_out: str) -> None: ...

    def set_epochs(self, epochs: int) -> None: ...

    def step(self, epoch: int, step: int, loss: float, acc: float, rate: float) -> None: ...

    def epoch_done(self, record: Any) -> None: ...

    def close(self) -> None: ...


class SilentProgress:
    """Reports nothing: what a run without a progress sink (or a rank other than 0) uses."""

    def begin(self, epochs: int, steps: int, start_epoch: int, held_out: str) -> None:
        pass

    def set_epochs(self, epochs: int) -> None:
        pass

    def step(self, epoch: int, step: int, loss: float, acc: float, rate: float) -> None:
        pass

    def epoch_done(self, record: Any) -> None:
        pass

    def close(self) -> None:
        pass
