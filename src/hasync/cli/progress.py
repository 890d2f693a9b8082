"""Progress bars on a terminal (rich.progress) for the commands that move bytes: sync and collect."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class Bars:
    """Byte progress on stderr, one bar per named task: name, bar, bytes done of total, speed, a note
    (``12 files``), time left; gone when closed. Silent when not enabled (stderr not a terminal, or
    ``--json``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    @property
    def started(self) -> bool:
        """Whether a bar shows (from the first update while enabled)."""
        return self._progress is not None

    def update(self, what: str, done: int, total: int | None, note: str = "") -> None:
        """Task `what` has `done` bytes of `total` (None or 0: not known yet)."""
        if not self.enabled:
            return
        progress = self._progress or self._start()
        task = self._tasks.get(what)
        if task is None:
            task = self._tasks[what] = progress.add_task(what, total=total or None, note=note)
        progress.update(task, completed=done, total=total or None, note=note)

    def _start(self) -> Progress:
        # rich is imported when a bar first shows: a command that shows none starts faster without it.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[note]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        return self._progress

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
