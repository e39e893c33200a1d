"""The agent's background work, wired to the store in one place: the print worker, the
receipt pusher, and the scheduled sweeps (expiry, the factura global, the poll of what
customers invoiced in the cloud)."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import partial

from agent.app import Agent
from agent.slips import render_job
from printer.worker import PrintWorker
from service.scheduler import Lease, Scheduler
from sync.cloud_global import CloudGlobal
from sync.cloud_invoices import CloudInvoices
from sync.expiry import expire_overdue
from sync.global_invoice import GlobalInvoicing
from sync.outbox import ReceiptPusher
from sync.signing import Signers

# Seconds between sweeps. Expiry is cheap; a global invoice is due within 24 h of its
# period's close, so five minutes after the close is plenty and costs nothing.
EXPIRE_EVERY = 60
GLOBAL_EVERY = 300
PRINT_CLAIMS_EVERY = 30


class SyncKeyError(ValueError):
    """A company's Facturapi key cannot be read: found at start-up, not in the night."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Sync:
    """The Facturapi side of the agent: up (receipts), down (customer invoices) and the
    global invoices issued there. Empty when no company uses Facturapi."""

    def __init__(self, agent: Agent, *, on_link=lambda: None, clock=_utcnow):
        self.problem: str | None = None
        try:
            clients = agent.facturapi_clients()
        except ValueError as exc:
            clients, self.problem = {}, str(exc)
        self.clients = clients
        self.pusher = ReceiptPusher(agent.config, agent.receipts, clients, concurrency=agent.config.upstream.concurrency,
                                    clock=clock, on_link=on_link)  # fmt: skip
        self.invoices = CloudInvoices(agent.config, agent.receipts, agent.store, clients, clock=clock)
        self.cloud_global = CloudGlobal(agent.global_runs, agent.receipts, self.invoices)

    def check(self) -> None:
        if self.problem:
            raise SyncKeyError(self.problem)


def global_invoicing(agent: Agent, signers: Signers | None = None, sync: Sync | None = None) -> GlobalInvoicing:
    signers = signers or Signers(agent.config, agent.data_dir, agent.upstream.kind)
    sync = sync or Sync(agent)
    return GlobalInvoicing(agent.config, agent.global_runs, agent.upstream, signers,
                           cloud=sync.cloud_global, client_for=sync.clients.get)  # fmt: skip


class Background:
    def __init__(self, agent: Agent):
        self.agent = agent
        agent.background = self
        self.signers = Signers(agent.config, agent.data_dir, agent.upstream.kind)
        self.print_worker = PrintWorker(agent.print_queue, partial(render_job, agent.config))
        agent.on_print_job = self.print_worker.wake
        self.sync = Sync(agent, on_link=self.print_worker.wake)
        agent.on_ticket_stored = self.sync.pusher.wake
        self.global_invoicing = global_invoicing(agent, self.signers, self.sync)
        jobs = {
            "expire": (partial(expire_overdue, agent.store, agent.config), EXPIRE_EVERY),
            "global-invoice": (self.global_invoicing.run, GLOBAL_EVERY),
        }
        if self.sync.clients:
            jobs["sync-poll"] = (self.sync.invoices.run_once, agent.config.upstream.poll_every)
        lock = None
        if agent.presence.kind == "postgresql":
            lock = Lease(agent.presence)
            # A process that dies on a shared database leaves its print claims behind
            # while the others go on: they are settled here, not only at a start-up.
            jobs["print-claims"] = (agent.print_queue.recover_interrupted, PRINT_CLAIMS_EVERY)
        self.scheduler = Scheduler(agent.data_dir, jobs, lock=lock)

    def check(self) -> None:
        """What must be right before the agent starts: each configured CSD (CsdError) and
        each Facturapi key (SyncKeyError)."""
        self.sync.check()
        self.signers.check()

    def start(self) -> None:
        # Before the worker runs: a slip cut off by a crash is not printed a second time.
        self.agent.print_queue.recover_interrupted()
        self.print_worker.start()
        self.sync.pusher.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.sync.pusher.stop()
        self.print_worker.stop()
