"""Progress for a reader: durations and counts in words, the plan, the ETA from the measured rate,
the warning that names what shrinks a long training, and the relay from a kernel to the terminal."""

import io
import subprocess
import sys

import pytest

from bnprivacy import progress
from bnprivacy.progress import PROGRESS_ENV, PlannedRun, TrainingClock


@pytest.fixture(autouse=True)
def to_stderr(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)


@pytest.mark.parametrize("seconds, words", [(0, "0 s"), (44.6, "45 s"), (89, "89 s"), (90, "2 min"),
                                            (5339, "89 min"), (5400, "1 h 30 min"), (11_100, "3 h 05 min"),
                                            (-3, "0 s")])
def test_durations_read_as_people_write_them(seconds, words):
    assert progress.duration(seconds) == words


@pytest.mark.parametrize("value, words", [(950, "950"), (12_400, "12.4 thousand"), (3.1e6, "3.1 million"),
                                          (2e9, "2.0 billion")])
def test_counts_read_as_people_write_them(value, words):
    assert progress.count(value) == words


def runs(n, models=16, images=1000, epochs=10):
    return [PlannedRun(f"run {i}", models, images, epochs) for i in range(n)]


def test_the_plan_counts_models_and_image_epochs_before_anything_trains(capsys):
    TrainingClock("family", runs(3), loaded=2).start()
    assert capsys.readouterr().err == ("family: 3 runs to train (2 more are in the results store): 48 models, "
                                       "480.0 thousand image-epochs (models x images x epochs); a time "
                                       "estimate follows the first run\n")


def test_the_time_left_is_the_remaining_work_at_the_measured_rate(capsys):
    clock = TrainingClock("family", runs(4), now=lambda: 0.0)
    clock.run_trained(clock.planned[0], 40.0)  # 160,000 image-epochs in 40 s: 4,000 per second
    assert clock.rate() == 4000.0 and clock.seconds_left() == 120.0
    line = capsys.readouterr().err
    assert line.startswith("family: run 1/4 trained (run 0) in 40 s, 4.0 thousand images/s; about 2 min left")
    for run in clock.planned[1:]:
        clock.run_trained(run, 40.0)
    assert capsys.readouterr().err.splitlines()[-1].endswith("; training done in 3 min")  # 4 x 40 s


def test_each_kind_of_run_is_estimated_at_its_own_measured_rate(capsys):
    # Chapter 06 under cifar: after the non-private runs the old estimate said 17 min for DP-SGD runs
    # that took 70 (each image costs several times more with per-sample gradients).
    plain, dp_a, dp_b = PlannedRun("GN", 16, 1000, 10), *(PlannedRun(f"DP {e}", 16, 1000, 10, "DP-SGD") for e in (8, 2))
    clock = TrainingClock("mitigation", [plain, dp_a, dp_b], now=lambda: 0.0)
    clock.run_trained(plain, 40.0)  # 4,000 image-epochs a second, the only rate measured so far
    assert clock.unmeasured_kinds() == ["DP-SGD"] and clock.seconds_left() == 80.0
    told = capsys.readouterr().err  # the end time is local, so only the text around it is compared
    assert "about 80 s left (ends about " in told
    assert told.endswith("); its DP-SGD runs, none trained yet, are counted at the rate so far and may take longer\n")
    clock.run_trained(dp_a, 160.0)  # DP-SGD at 1,000 a second: the last run takes 160 s, not 100 s
    assert clock.unmeasured_kinds() == [] and clock.seconds_left() == 160.0
    told = capsys.readouterr().err
    assert "about 3 min left (ends about " in told and "may take longer" not in told


def test_a_training_longer_than_an_hour_names_what_shrinks_it_once(capsys):
    clock = TrainingClock("family", runs(10), shrink="n_models or seeds", now=lambda: 0.0)
    clock.run_trained(clock.planned[0], 600.0)   # 10 runs x 10 min
    clock.run_trained(clock.planned[1], 600.0)
    told = capsys.readouterr().err.splitlines()
    warnings = [line for line in told if "to shrink it" in line]
    assert warnings == ["family: the whole training takes about 1 h 40 min on this machine; to shrink it, "
                        "lower n_models or seeds"]


def test_a_short_training_gives_no_warning(capsys):
    clock = TrainingClock("family", runs(3), shrink="n_models", now=lambda: 0.0)
    clock.run_trained(clock.planned[0], 60.0)
    assert "shrink" not in capsys.readouterr().err


def test_nothing_to_train_says_so(capsys):
    TrainingClock("family", [], loaded=24).start()
    assert capsys.readouterr().err == "family: all 24 runs are in the results store; nothing to train\n"


def test_a_child_process_reports_through_the_relay_to_this_terminal(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    path = tmp_path / "progress" / "01.log"
    with progress.relayed(path, "  01: "):
        import os
        assert os.environ[PROGRESS_ENV] == str(path)
        code = "from bnprivacy.progress import report; report('first'); report('second   line')"
        subprocess.run([sys.executable, "-c", code], check=True)
    assert PROGRESS_ENV not in os.environ
    assert out.getvalue() == "  01: first\n  01: second line\n"


def test_the_relay_prints_every_finished_line_even_when_the_block_fails(tmp_path):
    out = io.StringIO()
    path = tmp_path / "p.log"
    with pytest.raises(RuntimeError):
        with progress.follow(path, "> ", every=60.0, out=out):
            with open(path, "a") as handle:
                handle.write("done\npartial")
            raise RuntimeError("the chapter failed")
    assert out.getvalue() == "> done\n"
