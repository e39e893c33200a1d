"""One agent per data directory runs the scheduled sweeps, starting with a catch-up."""
from __future__ import annotations

import threading

from service.scheduler import Scheduler


def sweep_counter():
    ran = threading.Event()
    calls = []

    def job():
        calls.append(1)
        ran.set()

    return job, ran, calls


def test_jobs_run_at_start_to_catch_up_what_was_missed(tmp_path):
    job, ran, calls = sweep_counter()
    scheduler = Scheduler(tmp_path, {"sweep": (job, 3600)})
    scheduler.start()
    try:
        assert ran.wait(10), "the sweep did not run at start-up"
        assert scheduler.running_jobs
    finally:
        scheduler.stop()
    assert len(calls) == 1
    assert "sweep" in scheduler.last_run


def test_a_second_agent_on_the_same_data_dir_runs_nothing_until_the_first_stops(tmp_path):
    first_job, first_ran, _ = sweep_counter()
    second_job, second_ran, second_calls = sweep_counter()
    first = Scheduler(tmp_path, {"sweep": (first_job, 3600)})
    second = Scheduler(tmp_path, {"sweep": (second_job, 3600)})
    first.start()
    second.start()
    try:
        assert first_ran.wait(10)
        assert not second.running_jobs
        assert second_calls == []
        first.stop()
        assert second._take_jobs()  # what its take-over check does every 10 s
        assert second_ran.wait(10)
    finally:
        first.stop()
        second.stop()


def test_a_failing_job_is_recorded_and_the_scheduler_keeps_going(tmp_path):
    done = threading.Event()

    def broken():
        done.set()
        raise RuntimeError("disk full")

    scheduler = Scheduler(tmp_path, {"broken": (broken, 3600)})
    scheduler.start()
    try:
        assert done.wait(10)
    finally:
        scheduler.stop()
    assert scheduler.last_error == {"broken": "disk full"}


def test_a_process_that_is_stopping_does_not_take_the_jobs_over(tmp_path):
    first = Scheduler(tmp_path, {"sweep": (lambda: None, 3600)})
    second = Scheduler(tmp_path, {"sweep": (lambda: None, 3600)})
    first.start()
    second.start()
    try:
        second.stand_down()  # SIGTERM: it finishes its requests...
        first.stop()  # ...while the holder goes away
        assert not second._take_jobs()  # what its take-over check does now
        assert not second.lock.held
    finally:
        second.stop()
