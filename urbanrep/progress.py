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

import collections
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

__all__ = ["ProgressBar", "StepLog", "format_seconds", "progress_logging", "set_reporter", "start_progress"]


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


#: Longest quiet spell of a :class:`StepLog` once its loop has run this long (seconds).
LOG_INTERVAL_S = 10.0
#: Steps whose pace gives a :class:`StepLog`'s ETA.
RECENT_STEPS = 3


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class StepLog:
    """Progress of a loop of about ``total`` steps: a progress bar (:func:`start_progress`) and log lines.

    A line (steps done, the step just done, time elapsed, ETA) is logged whenever ``interval``
    seconds have passed since the loop started or since the last line, and a last line when the
    loop ends if any was logged: a loop that ends within ``interval`` seconds stays quiet. The ETA
    takes the pace of the last :data:`RECENT_STEPS` steps (reaching back at least a second, so steps
    that arrive in bursts from worker processes are paced by the bursts), so a loop whose steps
    change in cost (quick regression folds, then slow share-probe folds) is estimated at its
    current pace.

    Args:
        stage: Name of the loop, first word of every line and the bar's label.
        total: Number of steps expected (the ETA's denominator).
        logger: Where the lines go (INFO).
        interval: Seconds between two lines (default :data:`LOG_INTERVAL_S`).
        hint: Appended to the first line (e.g. how to make the loop faster).
    """

    def __init__(self, stage: str, total: int, logger: logging.Logger, interval: float | None = None,
                 hint: str = "") -> None:
        self.stage, self.total, self.log, self.hint = stage, max(int(total), 0), logger, hint
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.done, self.done_at_line, self.what = 0, 0, ""
        self.t0 = self.last = time.perf_counter()
        self.recent: collections.deque[tuple[float, int]] = collections.deque([(self.t0, 0)], maxlen=64)
        self.bar = start_progress(stage, self.total)

    def step(self, what: str, n: int = 1) -> None:
        """``n`` more steps are done; ``what`` names the last one (shown beside the bar and in the line)."""
        self.done += n
        self.what = what
        self.bar.update(n, step=what)
        now = time.perf_counter()
        self.recent.append((now, self.done))
        if now - self.last >= self.interval:
            self._line(now)

    def close(self) -> None:
        """End the loop: a last line when earlier ones were logged, and the bar closed."""
        if self.done_at_line and self.done_at_line != self.done:
            self._line(time.perf_counter())
        self.bar.close()

    def _line(self, now: float) -> None:
        first = not self.done_at_line
        self.last, self.done_at_line = now, self.done
        t_last, done_last = self.recent[-1]
        t_first, done_first = self.recent[0]
        for t, done in reversed(self.recent):  # the last RECENT_STEPS steps, over at least a second
            if done_last - done >= RECENT_STEPS and t_last - t >= 1.0:
                t_first, done_first = t, done
                break
        per_step = (t_last - t_first) / max(done_last - done_first, 1)
        self.log.info("%s: %d/%d done (%s), %s elapsed, ETA %s%s", self.stage, self.done, self.total, self.what,
                      format_seconds(now - self.t0), format_seconds(max(self.total - self.done, 0) * per_step),
                      f"; {self.hint}" if first and self.hint else "")
