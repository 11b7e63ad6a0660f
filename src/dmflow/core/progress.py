"""Progress a person can watch: one log line per ``every`` seconds with done/total, rate and ETA.

A long job (training a chunk, the moments, a fit block, a baseline) makes a ``Progress`` and
advances it as work is done; a line is logged (logger ``dmflow.core.progress``, INFO) when the
job starts, then at most once per ``every`` seconds, so at least that often while work advances
in steps shorter than ``every``::

    train_chunk 0.5/fit/00003: 40/100 models (40%), 2.31 models/s, ETA 26 s

The rules send a job's stderr, where these lines go, to its log file (``tail -f`` it). ``finish``
logs one more line on the logger ``dmflow.core.progress.done``, which the command line also prints
on stdout: Snakemake shows a local job's stdout on its console, so the console gets one line per
finished job with its rate, beside Snakemake's "x of y steps done" (``dmflow status`` adds up a
whole run). ``every`` defaults to ``EVERY`` seconds; the environment variable ``ENV`` changes it
(tests, or a person who wants more lines).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
done_log = logging.getLogger(__name__ + ".done")

EVERY = 30.0
"""Seconds between two progress lines of one job (at most; one line per step when steps take longer)."""

ENV = "DMFLOW_PROGRESS_SECONDS"
"""The environment variable that overrides ``EVERY`` (a positive number of seconds)."""


class ProgressError(ValueError):
    """A progress setting that is not a positive number of seconds; the message is one line."""


def interval() -> float:
    """Seconds between progress lines: ``ENV`` if set, else ``EVERY``.

    Raises
    ------
    ProgressError
        ``ENV`` is set to something other than a positive, finite number.
    """
    text = os.environ.get(ENV)
    if text is None or not text.strip():
        return EVERY
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ProgressError(
            f"{ENV}={text!r}: give a positive number of seconds between progress lines (default {EVERY:g})"
        )
    return value


def duration(seconds: float) -> str:
    """A duration as a person reads it: ``42 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if not math.isfinite(seconds):
        return "unknown"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def rate_line(done: float, total: float, *, unit: str, seconds: float) -> str:
    """``40/100 models (40%), 2.31 models/s, ETA 26 s`` for ``done`` of ``total`` after ``seconds``."""
    rate = done / seconds if seconds > 0 and done > 0 else math.nan
    eta = (total - done) / rate if rate > 0 else math.nan
    share = 100 * done / total if total else 100.0
    done_text = f"{done:.0f}" if float(done).is_integer() else f"{done:.1f}"
    rate_text = f"{rate:.3g} {unit}/s" if math.isfinite(rate) else f"- {unit}/s"
    return f"{done_text}/{total:.0f} {unit} ({share:.0f}%), {rate_text}, ETA {duration(eta)}"


class Progress:
    """Counts a job's done work and logs it at most every ``every`` seconds (thread-safe).

    Parameters
    ----------
    what : str
        The job, starting the lines (``train_chunk 0.5/fit/00003``).
    total : float
        The work of the whole job, in ``unit``.
    unit : str
        What is counted (``models``, ``rows``, ``target-lambdas``).
    every : float, optional
        Seconds between lines; ``interval()`` by default.
    clock : callable
        Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        what: str,
        total: float,
        unit: str,
        *,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit = what, float(total), unit
        self.every = interval() if every is None else float(every)
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0.0
        self._lock = threading.Lock()
        log.info("%s: %s", what, rate_line(0, self.total, unit=unit, seconds=0))

    def update(self, done: float) -> str | None:
        """Set the work done so far; log and return a line if ``every`` seconds have passed since the last."""
        with self._lock:
            self.done = min(float(done), self.total)
            line = self._due()
        if line:
            log.info("%s", line)
        return line

    def advance(self, amount: float) -> str | None:
        """Add ``amount`` to the work done (as ``update``)."""
        with self._lock:
            self.done = min(self.done + float(amount), self.total)
            line = self._due()
        if line:
            log.info("%s", line)
        return line

    def _due(self) -> str | None:
        now = self.clock()
        if now - self.last < self.every:
            return None
        self.last = now
        return f"{self.what}: {rate_line(self.done, self.total, unit=self.unit, seconds=now - self.start)}"

    def finish(self) -> str:
        """Log (and return) the job's last line: all of ``total`` done, its time and mean rate."""
        seconds = self.clock() - self.start
        rate = self.total / seconds if seconds > 0 else math.inf
        line = f"{self.what}: done, {self.total:.0f} {self.unit} in {duration(seconds)} ({rate:.3g} {self.unit}/s)"
        done_log.info("%s", line)
        return line
