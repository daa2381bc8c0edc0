"""Progress reporting without drawing: library code reports, the CLI decides how to show it.

Library stages open a bar around their long loops::

    bar = start_progress("training", total=epochs)
    for epoch in ...:
        bar.update(1, loss=f"{loss:.3f}")
    bar.close()

By default nothing is shown. The CLI installs a reporter (tqdm bars with the stage name and an
ETA when stderr is a terminal) through :func:`set_reporter`; tests and notebooks may install
their own. Long stages also log progress lines (training: epochs, s/epoch, ETA, at least every
10 s); :func:`progress_logging` shows them on stderr from Python when the caller has configured no
logging (``UrbanRep.fit`` does that by default).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol

__all__ = ["ProgressBar", "progress_logging", "set_reporter", "start_progress"]


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



@contextlib.contextmanager
def progress_logging(enabled: bool = True) -> Iterator[None]:
    """Show urbanrep's INFO log lines (progress, ETA, choices made) on stderr for the duration.

    Does nothing when ``enabled`` is False or when logging is already configured for the
    ``urbanrep`` logger or the root logger (the caller's handlers and levels then decide).
    """
    logger = logging.getLogger("urbanrep")
    if not enabled or logger.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("urbanrep: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
