"""The agent's background work, wired to the store in one place: the print worker now;
the scheduler and the upstream sync join it here."""
from __future__ import annotations

from functools import partial

from agent.app import Agent
from agent.slips import render_job
from printer.worker import PrintWorker


class Background:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.print_worker = PrintWorker(agent.print_queue, partial(render_job, agent.config))
        agent.on_print_job = self.print_worker.wake

    def start(self) -> None:
        # Before the worker runs: a slip cut off by a crash is not printed a second time.
        self.agent.print_queue.recover_interrupted()
        self.print_worker.start()

    def stop(self) -> None:
        self.print_worker.stop()
