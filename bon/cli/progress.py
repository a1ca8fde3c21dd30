"""Rich progress bars for the pipeline's stages (candidates, judgements, prompts)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items made per second since the stage started (items found done on disk are not counted); blank for the
    first second, when a burst of a finished batch would read as thousands a second."""

    def render(self, task) -> Text:
        made, elapsed = task.completed - task.fields.get("start_done", 0), task.elapsed or 0.0
        return Text(f"{made / elapsed:.1f}/s" if made > 0 and elapsed >= 1 else "", style="progress.data.speed")


class RichProgress:
    """The pipeline's `Progress` on a rich console; use as a context manager."""

    def __init__(self, console: Console):
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description:>11}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", style="dim", markup=False),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def start(self, stage: str, total: int, done: int) -> None:
        self._tasks[stage] = self._progress.add_task(stage, total=total, completed=done, info="", start_done=done)

    def advance(self, stage: str, amount: int) -> None:
        self._progress.advance(self._tasks[stage], amount)

    def status(self, line: str) -> None:
        if "prompts" in self._tasks:  # e.g. queue depths of the Ray executor, beside the prompts bar
            self._progress.update(self._tasks["prompts"], info=line)

    def note(self, message: str) -> None:
        self._progress.console.print(Text(message, style="dim"))
