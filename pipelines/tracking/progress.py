"""What a person sees while a run trains: one line that updates in place (epoch, step, images/second,
loss, time left) and the few messages worth keeping (resumed from a checkpoint, each epoch's results).

The chief worker posts to a small actor on the driver's node (to a board in the driver where the driver trains); a
thread of the driver reads it and draws.
On a terminal the line is redrawn in place; elsewhere (a `ray job submit` log, a file) it is printed
as a plain line every `plain_every` seconds, so logs stay short and readable.
"""
import sys
import threading
import time
from collections import deque
from contextlib import nullcontext
from typing import Callable, Optional, TextIO


def start_board():
    """The actor the chief worker posts to, kept on the driver's node (it outlives lost nodes)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(ProgressBoard).options(scheduling_strategy=here).remote()


class ProgressBoard:
    """The latest progress and every message, as posted by the chief worker."""

    def __init__(self):
        self.state: dict = {}
        self.messages: list[str] = []

    def update(self, state: dict) -> None:
        self.state = state

    def message(self, text: str) -> None:
        self.messages.append(text)

    def read(self, since: int) -> tuple[dict, list[str]]:
        return self.state, self.messages[since:]


class BoardHere:
    """The board in this process, for a driver that trains its one worker and draws the line: called as the actor's
    handle is (`board.update.remote(state)`), answered at once. Not an actor, whose process would start beside Ray
    Data's at the run's start (1-2 s later to the first step on 2 cores)."""

    def __init__(self):
        board = ProgressBoard()
        for name in ("update", "message", "read"):
            setattr(self, name, Answered(getattr(board, name)))


class Answered:
    def __init__(self, method: Callable):
        self.remote = method


def read_board(board, since: int) -> tuple[dict, list[str]]:
    """The board's state and its messages from the `since`-th on."""
    import ray

    reply = board.read.remote(since)
    return reply if isinstance(board, BoardHere) else ray.get(reply, timeout=10)


def say(line: str, board=None, echo: bool = True) -> None:
    """A message for the worker's log (`echo`: not where this process is the driver drawing the board) and, through
    the board, for the person running the run."""
    # Ray Train patches print() to go through a logger that echoes it twice on the driver.
    if echo:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    if board is not None:
        board.message.remote(line)


class StepClock:
    """The time left from the rate of the last `window` steps, not from the run's average: a first epoch's slow
    start (Ray Data starting, caches warming) would otherwise hold the estimate up for the whole run."""

    def __init__(self, window: int = 50, clock: Callable[[], float] = time.monotonic):
        self.clock, self.times = clock, deque(maxlen=window + 1)

    def tick(self) -> None:
        """At the end of each step."""
        self.times.append(self.clock())

    def seconds_left(self, steps_left: int) -> Optional[float]:
        if len(self.times) < 2:
            return None
        return steps_left * (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_text(state: dict) -> str:
    left = state.get("seconds_left")
    return (f"epoch {state['epoch']}/{state['epochs']} step {state['step']}/{state['steps']} | "
            f"{state['images_per_second']:.0f} img/s | loss {state['loss']:.4f} | "
            + (f"{duration(left)} left" if left is not None else "estimating time left"))


def progress_line(board):
    """The progress line of `board` as a context (none: nothing drawn, a run without a progress line)."""
    return ProgressLine(board) if board is not None else nullcontext()


class ProgressLine:
    """Driver side: polls the board every `every` seconds and draws."""

    def __init__(self, board, stream: Optional[TextIO] = None, every: float = 1.0, plain_every: float = 30.0):
        self.board, self.stream, self.every = board, stream or sys.stdout, every
        self.in_place = self.stream.isatty()
        self.plain_every = plain_every
        self.seen, self.drawn, self.last_plain, self.last_state = 0, False, 0.0, None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="progress-line", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.poll()  # the last messages
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            self.poll()

    def poll(self) -> None:
        try:
            state, messages = read_board(self.board, self.seen)
        except Exception:  # the driver is shutting down, or Ray is: nothing to draw
            return
        self.seen += len(messages)
        for text in messages:
            self.write(text, keep=True)
        if state and state != self.last_state:
            self.last_state = state
            if self.in_place or time.time() - self.last_plain >= self.plain_every:
                self.last_plain = time.time()
                self.write(progress_text(state), keep=not self.in_place)

    def write(self, text: str, keep: bool) -> None:
        if self.in_place:
            self.stream.write("\r\033[K" + text + ("\n" if keep else ""))
            self.drawn = not keep
            if keep and self.last_state:  # the line goes on below the message
                self.stream.write(progress_text(self.last_state))
                self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
