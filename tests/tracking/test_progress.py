"""The progress line: a real board actor (or the board of a driver that trains), drawn in place on a terminal and as
plain lines elsewhere."""
import io
import time

import pytest

from pipelines.tracking.progress import BoardHere, ProgressLine, StepClock, progress_text, start_board


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


STATE = {"epoch": 2, "epochs": 10, "step": 340, "steps": 468, "images_per_second": 312.4, "loss": 2.04123,
         "seconds_left": 192}


def test_progress_text_names_epoch_step_rate_loss_and_time_left():
    assert progress_text(STATE) == "epoch 2/10 step 340/468 | 312 img/s | loss 2.0412 | 3m12s left"
    assert progress_text({**STATE, "seconds_left": 4000}).endswith("1h06m left")
    assert progress_text({**STATE, "seconds_left": None}).endswith("loss 2.0412 | estimating time left")


def test_the_time_left_follows_the_recent_steps_not_the_slow_start():
    """20 steps of 10 s (Ray Data starting, caches cold), then 60 of 1 s: with 100 steps left, the last 50
    steps' rate says 100 s; the run's average (260 s over 80 steps) would have said 325 s."""
    now = [0.0]
    clock = StepClock(window=50, clock=lambda: now[0])
    assert clock.seconds_left(100) is None
    for seconds in [10.0] * 20 + [1.0] * 60:
        now[0] += seconds
        clock.tick()
    assert clock.seconds_left(100) == pytest.approx(100.0)
    clock = StepClock(window=50, clock=lambda: now[0])
    for seconds in (10.0, 10.0, 2.0):  # fewer steps than the window: the rate over those there are
        now[0] += seconds
        clock.tick()
    assert clock.seconds_left(10) == pytest.approx(60.0)


@pytest.mark.slow
def test_on_a_terminal_the_line_updates_in_place_and_messages_stay(ray_session):
    drawn_in_place(start_board())


def test_the_board_of_a_driver_that_trains_is_drawn_the_same_without_an_actor():
    drawn_in_place(BoardHere())


def drawn_in_place(board) -> None:
    screen = Terminal()
    with ProgressLine(board, screen, every=0.05):
        board.update.remote(STATE)
        time.sleep(0.5)
        board.message.remote("epoch 2/10 done in 60s: knn_top1_k20 0.71")
        board.update.remote({**STATE, "step": 341})
        time.sleep(0.5)
    text = screen.getvalue()
    before, message, after = text.partition("\r\033[Kepoch 2/10 done in 60s: knn_top1_k20 0.71\n")
    assert message and "\n" not in before  # the line was redrawn in place until the message
    assert "step 340/468" in before and "step 341/468" in after and after.endswith("\n")
    assert text.count("epoch 2/10 done in 60s") == 1


@pytest.mark.slow
def test_elsewhere_it_prints_plain_lines_at_most_every_plain_every_seconds(ray_session):
    board, log = start_board(), io.StringIO()
    with ProgressLine(board, log, every=0.05, plain_every=3600):
        for step in range(1, 30):
            board.update.remote({**STATE, "step": step})
            time.sleep(0.01)
        board.message.remote("resumed from checkpoint: epoch 1, step 8")
        time.sleep(0.3)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "resumed from checkpoint: epoch 1, step 8" in lines
    assert sum(line.startswith("epoch 2/10 step") for line in lines) == 1  # one progress line, not 29
