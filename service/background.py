"""The agent's background work, wired to the store in one place: the print worker and
the scheduled sweeps (expiry, the factura global). The upstream sync joins them here."""
from __future__ import annotations

from functools import partial

from agent.app import Agent
from agent.slips import render_job
from printer.worker import PrintWorker
from service.scheduler import Scheduler
from sync.expiry import expire_overdue
from sync.global_invoice import GlobalInvoicing
from sync.signing import Signers

# Seconds between sweeps. Expiry is cheap; a global invoice is due within 24 h of its
# period's close, so five minutes after the close is plenty and costs nothing.
EXPIRE_EVERY = 60
GLOBAL_EVERY = 300


def global_invoicing(agent: Agent, signers: Signers | None = None) -> GlobalInvoicing:
    signers = signers or Signers(agent.config, agent.data_dir, agent.upstream.kind)
    return GlobalInvoicing(agent.config, agent.global_runs, agent.upstream, signers)


class Background:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.signers = Signers(agent.config, agent.data_dir, agent.upstream.kind)
        self.print_worker = PrintWorker(agent.print_queue, partial(render_job, agent.config))
        agent.on_print_job = self.print_worker.wake
        self.global_invoicing = global_invoicing(agent, self.signers)
        self.scheduler = Scheduler(agent.data_dir, {
            "expire": (partial(expire_overdue, agent.store, agent.config), EXPIRE_EVERY),
            "global-invoice": (self.global_invoicing.run, GLOBAL_EVERY),
        })  # fmt: skip

    def check(self) -> None:
        """What must be right before the agent starts: each configured CSD (CsdError)."""
        self.signers.check()

    def start(self) -> None:
        # Before the worker runs: a slip cut off by a crash is not printed a second time.
        self.agent.print_queue.recover_interrupted()
        self.print_worker.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.print_worker.stop()
