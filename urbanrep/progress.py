"""Progress reporting without drawing: library code reports, the CLI decides how to show it.

Library stages open a bar around their long loops::

    bar = start_progress("training", total=epochs)
    for epoch in ...:
        bar.update(1, loss=f"{loss:.3f}")
    bar.close()

By default nothing is shown. The CLI installs a reporter (tqdm bars with the stage name and an
ETA when stderr is a terminal) through :func:`set_reporter`; tests and notebooks may install
their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ProgressBar", "set_reporter", "start_progress"]


class ProgressBar(Protocol):
    """What a reporter hands back for one stage."""

    def update(self, n: int = 1, **info: Any) -> None:
        """Advance by ``n`` steps; ``info`` is shown beside the bar (e.g. the current loss)."""

    def close(self) -> None:
        """End the stage."""


class _Silent:
    def update(self, n: int = 1, **info: Any) -> None:
        return None

    def close(self) -> None:
        return None


Reporter = Callable[[str, int | None], ProgressBar]
_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> Reporter | None:
    """Install ``reporter(stage, total) -> ProgressBar`` (None: silent); returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def start_progress(stage: str, total: int | None = None) -> ProgressBar:
    """A progress bar for ``stage`` with ``total`` steps (None: unknown); the caller closes it."""
    return _reporter(stage, total) if _reporter is not None else _Silent()

