"""What the operator commands print: outcome tallies, a progress bar, warnings.

Results go to stdout, progress and warnings to stderr, so a command's stdout can
be kept as a record while the terminal shows the bar.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import click

FAILED = "failed"


def warn(message: str) -> None:
    Progress.current().interrupt_line()
    click.echo(message, err=True)


@dataclass(slots=True)
class Tally:
    """Outcome counts of a run, in the order of `labels`; `names` relabels them for a dry run."""

    labels: Sequence[str]
    names: Mapping[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = dict.fromkeys(self.labels, 0)

    def add(self, label: str) -> None:
        self.counts[label] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.counts[FAILED]

    def describe(self) -> str:
        return ", ".join(f"{self.names.get(label, label)} {count}" for label, count in self.counts.items())


class Progress:
    """A progress bar on stderr, over a known total when there is one, else a running count.

    On a terminal one line is rewritten in place; elsewhere (logs, CI) each step gets a line.
    """

    BAR_WIDTH = 30
    _current: Progress | None = None

    def __init__(self, total: int | None = None) -> None:
        self._total = total
        self._live = sys.stderr.isatty()
        self._dirty = False

    @classmethod
    def current(cls) -> Progress:
        if cls._current is None:
            cls._current = Progress()
        return cls._current

    @classmethod
    def start(cls, total: int | None) -> Progress:
        if cls._current is not None:
            cls._current.interrupt_line()
        cls._current = Progress(total)
        return cls._current

    def step(self, done: int, noun: str, tally: Tally) -> None:
        """Show `done` (of the total) `noun`, e.g. "listed", and the tally so far."""
        position = f"{done}/{self._total}" if self._total else f"{done}"
        line = f"{self.bar(done)}{position} {noun}, {tally.total} processed: {tally.describe()}"
        if self._live:
            click.echo("\r\x1b[2K" + line, err=True, nl=False)
            self._dirty = True
        else:
            click.echo(line, err=True)

    def bar(self, done: int) -> str:
        if not self._total:
            return ""
        filled = min(self.BAR_WIDTH, done * self.BAR_WIDTH // self._total)
        return f"[{'#' * filled}{'-' * (self.BAR_WIDTH - filled)}] "

    def interrupt_line(self) -> None:
        """End the in-place line so a message printed next starts on its own line."""
        if self._dirty:
            click.echo(err=True)
            self._dirty = False
