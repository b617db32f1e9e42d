"""Progress a reader can see in the terminal while a chapter trains: the plan, each run, an ETA.

A chapter runs inside a Jupyter kernel started by papermill, so what it prints lands in the
notebook, not in the terminal of ``make book``. :func:`report` therefore writes to the file that
``$BNPRIVACY_PROGRESS`` names when it is set (``book.execute_chapter`` sets it and :func:`follow`
echoes new lines to the terminal while the chapter runs), and to standard error otherwise (a
script or a notebook run by hand).

:class:`TrainingClock` turns a plan of runs into the messages: before training, how much work
(models x images x epochs); after the first trained run, the time that work takes at the rate
just measured, with the parameters that shrink it when it exceeds an hour; after every run,
what is left and when it should end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import sys
import threading
import time
from pathlib import Path

PROGRESS_ENV = "BNPRIVACY_PROGRESS"
LONG_SECONDS = 3600.0  # above this, the estimate names the parameters that shrink it


def report(message: str) -> None:
    """Send one line of progress to the reader (see the module docstring for where it goes)."""
    line = " ".join(message.split())
    target = os.environ.get(PROGRESS_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def follow(path: Path, prefix: str, *, every: float = 1.0, out=None):
    """While the block runs, print each new line of ``path`` to ``out`` (standard output) with
    ``prefix``; the lines written up to the block's end are all printed, even after a failure."""
    out = out or sys.stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    stop = threading.Event()
    offset = [0]

    def echo_new_lines():
        with open(path, encoding="utf-8") as handle:
            handle.seek(offset[0])
            for line in handle.readlines():
                if line.endswith("\n"):
                    print(f"{prefix}{line.rstrip()}", file=out, flush=True)
                    offset[0] += len(line.encode("utf-8"))
                else:
                    break  # a line still being written: read it whole next time

    def loop():
        while not stop.wait(every):
            echo_new_lines()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        echo_new_lines()


@contextlib.contextmanager
def relayed(path: Path, prefix: str):
    """Processes started inside the block (a papermill kernel) :func:`report` into ``path``, and
    :func:`follow` echoes their lines here as they come."""
    previous = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = str(path)
    try:
        with follow(path, prefix):
            yield path
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = previous


def duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3 h 05 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def count(value: float) -> str:
    """A large count for people: ``950``, ``12.4 thousand``, ``3.1 million``, ``2.0 billion``."""
    for size, word in ((1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if value >= size:
            return f"{value / size:.1f} {word}"
    return f"{value:.0f}"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run still to train: a label for people, its models and the images each model trains
    on per epoch, and its epochs. ``kind`` groups runs that train at one rate (e.g. "DP-SGD",
    several times slower per image than ordinary training): each kind's time left is read at its
    own measured rate."""

    label: str
    models: int
    images: float
    epochs: int
    kind: str = ""

    @property
    def work(self) -> float:
        """Image-epochs: models x images x epochs (the unit the rate is measured in)."""
        return self.models * self.images * self.epochs


class TrainingClock:
    """Reports a plan of runs as it is trained: the plan, each finished run and an ETA.

    ``shrink`` names the parameters that make the work smaller (e.g. ``"n_models, seeds,
    budgets, train_size"``); ``now`` is the clock (a test passes its own)."""

    def __init__(self, what: str, planned: list[PlannedRun], *, loaded: int = 0, shrink: str = "", now=time.time):
        self.what, self.planned, self.loaded, self.shrink, self.now = what, list(planned), loaded, shrink, now
        self.done_work = 0.0
        self.seconds = 0.0
        self.done_by_kind: dict[str, tuple[float, float]] = {}  # kind -> (image-epochs, seconds)
        self.finished = 0
        self.warned = False

    @property
    def total_work(self) -> float:
        return sum(run.work for run in self.planned)

    def plan_message(self) -> str:
        """What is about to be trained, before any of it is."""
        if not self.planned:
            return f"{self.what}: all {self.loaded} runs are in the results store; nothing to train"
        models = sum(run.models for run in self.planned)
        found = f" ({self.loaded} more are in the results store)" if self.loaded else ""
        return (f"{self.what}: {len(self.planned)} runs to train{found}: {models} models, "
                f"{count(self.total_work)} image-epochs (models x images x epochs); "
                "a time estimate follows the first run")

    def start(self) -> None:
        """Report the plan."""
        report(self.plan_message())

    def run_trained(self, run: PlannedRun, seconds: float) -> None:
        """Record that ``run`` took ``seconds`` and report what is left."""
        self.finished += 1
        self.done_work += run.work
        self.seconds += seconds
        work, spent = self.done_by_kind.get(run.kind, (0.0, 0.0))
        self.done_by_kind[run.kind] = (work + run.work, spent + seconds)
        report(self.progress_message(run, seconds))
        left = self.seconds_left()
        if not self.warned and left is not None and self.seconds + left > LONG_SECONDS and self.shrink:
            self.warned = True
            report(f"{self.what}: the whole training takes about {duration(self.seconds + left)} on this "
                   f"machine; to shrink it, lower {self.shrink}")

    def rate(self) -> float | None:
        """Image-epochs per second over the runs trained so far."""
        return self.done_work / self.seconds if self.seconds > 0 else None

    def work_left_by_kind(self) -> dict[str, float]:
        """Image-epochs still to train, by kind of run."""
        left: dict[str, float] = {}
        for run in self.planned:
            left[run.kind] = left.get(run.kind, 0.0) + run.work
        for kind, (work, _) in self.done_by_kind.items():
            left[kind] = left.get(kind, 0.0) - work
        return {kind: work for kind, work in left.items() if work > 0}

    def unmeasured_kinds(self) -> list[str]:
        """Kinds with work left and no run trained yet: estimated at the overall rate."""
        return [kind for kind in self.work_left_by_kind() if kind not in self.done_by_kind]

    def seconds_left(self) -> float | None:
        """The remaining work of each kind at that kind's measured rate, or the overall rate for a
        kind not trained yet (None before any run is measured)."""
        rate = self.rate()
        if rate is None:
            return None
        left = 0.0
        for kind, work in self.work_left_by_kind().items():
            done, spent = self.done_by_kind.get(kind, (0.0, 0.0))
            left += work / (done / spent if done > 0 and spent > 0 else rate)
        return left

    def progress_message(self, run: PlannedRun, seconds: float) -> str:
        left = self.seconds_left()
        rate = self.rate()
        message = (f"{self.what}: run {self.finished}/{len(self.planned)} trained ({run.label}) in "
                   f"{duration(seconds)}, {count(rate)} images/s")
        if self.finished == len(self.planned):
            return message + f"; training done in {duration(self.seconds)}"
        end = datetime.datetime.fromtimestamp(self.now() + left).strftime("%H:%M")
        unmeasured = [kind for kind in self.unmeasured_kinds() if kind]
        caveat = (f"; its {' and '.join(unmeasured)} runs, none trained yet, are counted at the rate so far "
                  "and may take longer") if unmeasured else ""
        return message + f"; about {duration(left)} left (ends about {end}){caveat}"
