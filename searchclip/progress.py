"""Progress display for long runs: a bar on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("searchclip")

# Seconds between log lines when the output is not a terminal.
LOG_INTERVAL = 10.0
BAR_WIDTH = 30


class Progress:
    """A callable `(done, total)` that shows files done, images per second and ETA."""

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool = True):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.is_terminal = self.stream.isatty()
        self.started = time.monotonic()
        self.last_shown = 0.0
        self.shown_bar = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        if done == 0:
            # The clock starts when reading starts, not while the model loads.
            self.started = time.monotonic()
        now = time.monotonic()
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = (total - done) / rate if rate > 0 else float("inf")
        if self.is_terminal:
            if now - self.last_shown < 0.1 and done < total:
                return
            filled = int(BAR_WIDTH * done / total)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(
                f"\r{self.label} [{bar}] {done}/{total} files, {rate:.1f}/s, ETA {_duration(remaining)}  "
            )
            self.stream.flush()
            self.shown_bar = True
        elif now - self.last_shown >= LOG_INTERVAL or done == total:
            log.info("%s: %d/%d files, %.1f/s, ETA %s", self.label, done, total, rate, _duration(remaining))
        self.last_shown = now

    def close(self) -> None:
        """End the bar's line so later output starts on a fresh one."""
        if self.shown_bar:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "--:--"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"
