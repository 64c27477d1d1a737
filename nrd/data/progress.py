"""Progress of ``nrd-bench prepare``: one line per shard in logs, one line rewritten in place on a terminal."""

from __future__ import annotations

import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from one hour on, rounded to the second."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_line(title: str, done: int, total: int, read: int, seconds: float) -> str:
    """One progress report, e.g. ``prepare camvid train: 120/367 samples (32.7%), 10.0/s, ETA 0:25``. The rate
    counts the ``read`` samples of this run over ``seconds`` (shards kept from an earlier run cost nothing); the ETA
    is the samples left at that rate; both are ``?`` before any sample was read."""
    percent = 100 * done / total if total else 100.0
    if read and seconds > 0:
        rate = read / seconds
        speed = f"{rate:.1f}/s, ETA {format_duration((total - done) / rate)}"
    else:
        speed = "?/s, ETA ?"
    return f"{title}: {done}/{total} samples ({percent:.1f}%), {speed}"


class Progress:
    """Progress of one split of ``prepare_shards`` on ``stream`` (None: silent). On a terminal, one line rewritten
    in place (``\\r``) after every sample; elsewhere (a log file, a pipe) one line per shard, marked ``(kept)`` for a
    shard kept from an earlier run, so that logs stay short. See ``progress_line`` for the line."""

    def __init__(self, title: str, total: int, stream: TextIO | None):
        self.title, self.total, self.stream = title, total, stream
        self.tty = stream is not None and stream.isatty()
        self.done = self.read = self.width = 0
        self.started = time.monotonic()

    def line(self) -> str:
        return progress_line(self.title, self.done, self.total, self.read, time.monotonic() - self.started)

    def advance(self, count: int, read: bool = True) -> None:
        """``count`` more samples done; ``read``: by reading them (not by keeping their shard)."""
        self.done += count
        self.read += count if read else 0
        if self.tty:
            text = self.line()
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = max(self.width, len(text))

    def shard_done(self, kept: bool) -> None:
        if self.stream is not None and not self.tty:
            print(self.line() + (" (kept)" if kept else ""), file=self.stream, flush=True)

    def close(self) -> None:
        """End the terminal line (also after an error, so that the error message starts on a line of its own)."""
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0
