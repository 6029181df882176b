"""Progress on stderr: one bar per variant with the points done (redrawn in place on a terminal)."""

from __future__ import annotations

import sys


class ProgressBar:
    def __init__(self, label: str, total: int, enabled: bool = True, width: int = 24) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.width = width
        self.tty = sys.stderr.isatty()
        self._draw("starting")

    def _draw(self, note: str) -> None:
        if not self.enabled:
            return
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{self.label}] {bar} {self.done}/{self.total} points  {note}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def advance(self, note: str = "") -> None:
        self.done += 1
        self._draw(note)

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
