"""Long work written to a file or a pipe says how far it got, in plain lines (no live bar to redraw)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from fusionstream.consumers.training.generate import progress_bar
from fusionstream.consumers.training.progress_lines import LineProgress


def test_a_file_gets_a_line_at_start_while_moving_and_at_the_end() -> None:
    out = io.StringIO()
    console = Console(file=out, width=60)
    with progress_bar(console) as progress:
        assert isinstance(progress, LineProgress)
        progress.every_s = 0.0  # every step says so: the throttle is tested below
        task = progress.add_task("rendering training streams", total=4, info="")
        for step in range(4):
            progress.update(task, advance=1, info=f"{(step + 1) * 300} windows")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("rendering training streams: 0/4 (0 %),"), lines
    assert lines[1].startswith("rendering training streams: 1/4 (25 %),") and lines[1].endswith("; 300 windows")
    assert "left" in lines[1]
    assert lines[-1].startswith("rendering training streams: 4/4 (100 %),") and ", done; 1200 windows" in lines[-1]
    assert len(lines) == 5
    assert all("\x1b" not in line for line in lines)  # no escape codes in a log file


def test_lines_are_throttled_and_a_finished_task_is_said_once() -> None:
    out = io.StringIO()
    with progress_bar(Console(file=out, width=200)) as progress:
        task = progress.add_task("training encoders", total=1000, info="")
        for _ in range(999):
            progress.advance(task)
        progress.update(task, advance=1, info="epoch 4/4 loss 0.120")
        progress.update(task, info="again")  # after the end: nothing more
        cached = progress.add_task("test streams (cached)", total=1, completed=1, info="462 windows")
        progress.update(cached, info="462 windows")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # start, done, and the cached task's one line
    assert lines[1].startswith("training encoders: 1000/1000 (100 %)") and lines[1].endswith("epoch 4/4 loss 0.120")
    assert lines[2].startswith("test streams (cached): 1/1 (100 %)") and ", done" in lines[2]


def test_a_terminal_keeps_the_live_bar() -> None:
    progress = progress_bar(Console(file=io.StringIO(), force_terminal=True))
    assert type(progress) is Progress
