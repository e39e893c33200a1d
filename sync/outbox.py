"""Up: every stored ticket of a Facturapi company becomes a receipt, through any outage.

A background thread, woken by each stored ticket, claims unsent tickets from the store
(agent/receipts.py) and posts them with bounded concurrency. Each receipt carries an
idempotency key stable per company, branch and ticket, so a retry after a lost answer
gets the receipt already made instead of a second one. Failures back off exponentially
with jitter, a 429 waits as long as Retry-After says, and a circuit per company stops
asking an upstream that keeps failing until a cool-down has passed. See docs/sync.md.
"""
from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

from agent.insumo import parse_insumo
from agent.receipts import Outgoing, Pushed, Receipts
from sync.facturapi import FacturapiClient, RateLimited, Rejected, Unreachable, parse_time, receipt_body

log = logging.getLogger(__name__)

TOLERANCE = Decimal("0.01")
MAX_BACKOFF = timedelta(minutes=10)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> timedelta:
    """2, 4, 8 ... seconds up to ten minutes, each scaled by a random 50-100%: after an
    outage, hundreds of stores and thousands of receipts do not all retry at once."""
    ceiling = min(MAX_BACKOFF.total_seconds(), 2.0 ** max(1, attempts))
    return timedelta(seconds=ceiling * (0.5 + rng() / 2))


@dataclass
class Circuit:
    """Per company: after `threshold` failures in a row the circuit opens and no request
    goes out until `cooldown` has passed; then one round probes. Each failed probe doubles
    the cool-down, up to `max_cooldown`."""

    threshold: int = 5
    cooldown: timedelta = timedelta(seconds=30)
    max_cooldown: timedelta = timedelta(minutes=5)
    failures: int = 0
    open_until: datetime | None = None
    _current: timedelta | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allows(self, now: datetime) -> bool:
        return self.open_until is None or now >= self.open_until

    def succeeded(self) -> None:
        with self._lock:
            self.failures, self.open_until, self._current = 0, None, None

    def failed(self, now: datetime) -> None:
        with self._lock:
            self.failures += 1
            if self.failures < self.threshold:
                return
            if self.open_until is not None and now < self.open_until:
                return  # a request already in flight when it opened: not a failed probe
            self._current = min(self.max_cooldown, self._current * 2) if self._current else self.cooldown
            self.open_until = now + self._current

    def hold(self, until: datetime) -> None:
        """The upstream asked for a pause (429 Retry-After)."""
        with self._lock:
            self.open_until = max(self.open_until or until, until)


@dataclass
class RoundResult:
    pushed: int = 0
    retrying: int = 0
    stopped: int = 0


class ReceiptPusher:
    def __init__(
        self,
        config,
        receipts: Receipts,
        clients: dict[str, FacturapiClient],
        *,
        concurrency: int = 4,
        clock: Callable[[], datetime] = utcnow,
        on_link: Callable[[], None] = lambda: None,
        rng: Callable[[], float] = random.random,
    ):
        self.config = config
        self.receipts = receipts
        self.clients = clients  # company key -> client, for the Facturapi companies only
        self.clock = clock
        self.on_link = on_link  # a slip waiting for its link can print now
        self.rng = rng
        self.circuits = {key: Circuit() for key in clients}
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency) * max(1, len(clients)),
                                        thread_name_prefix="receipts")  # fmt: skip
        self.concurrency = concurrency
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round, a plain function: tests and `ticket-agent sync --once` call it ----------

    def run_once(self, limit: int = 200, *, everything: bool = False) -> RoundResult:
        """One round. `everything`: send every waiting receipt now, backoffs and open
        circuits ignored (a person ran `sync --once` because the line is back)."""
        now = self.clock()
        result = RoundResult()
        if everything:
            for circuit in self.circuits.values():
                circuit.succeeded()
        companies = [key for key in self.clients if self.circuits[key].allows(now)]
        if not companies:
            return result
        self.receipts.claim(companies, now, limit)
        due = self.receipts.due(companies, datetime.max if everything else now, limit)
        by_company: dict[str, list[Outgoing]] = {}
        for item in due:
            by_company.setdefault(item.company, []).append(item)
        futures = [self._pool.submit(self._push_company, key, items) for key, items in by_company.items()]
        for future in futures:
            part = future.result()
            result.pushed += part.pushed
            result.retrying += part.retrying
            result.stopped += part.stopped
        return result

    def _push_company(self, company_key: str, items: list[Outgoing]) -> RoundResult:
        result = RoundResult()
        # At most `concurrency` requests in flight per company; items go out in order.
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"receipts-{company_key[:6]}") as pool:
            outcomes = list(pool.map(lambda item: self._push(company_key, item), items))
        # What status shows: one write per branch and round, not one per receipt.
        pushed_at, errors = {}, {}
        for item, (outcome, error) in zip(items, outcomes):
            setattr(result, outcome, getattr(result, outcome) + 1)
            if outcome == "pushed":
                pushed_at[item.branch] = self.clock()
            elif error:
                errors[item.branch] = error
        for branch in set(pushed_at) | set(errors):
            self.receipts.note(company_key, branch, pushed=pushed_at.get(branch), error=errors.get(branch),
                               at=self.clock())  # fmt: skip
        return result

    def _push(self, company_key: str, item: Outgoing) -> tuple[str, str | None]:
        """("pushed" | "retrying" | "stopped", the error to show, if any)."""
        circuit = self.circuits[company_key]
        now = self.clock()
        if not circuit.allows(now):
            # Opened by another request of this round: this one stays due, and the next
            # rounds skip the company until the cool-down is over.
            return "retrying", None
        company = self.config.company(company_key)
        branch = company.branch(item.branch) if company else None
        if branch is None:
            error = f"branch {item.branch} is no longer configured"
            self.receipts.stop(item.ticket_id, error)
            return "stopped", f"ticket {item.number}: {error}"
        body = receipt_body(
            parse_insumo(item.insumo), sold_at=item.sold_at, zone=branch.zone, branch_name=branch.name,
            number=item.number, idempotency_key=item.idempotency_key,
        )  # fmt: skip
        try:
            answer = self.clients[company_key].create_receipt(body)
        except RateLimited as exc:
            wait = timedelta(seconds=exc.retry_after) if exc.retry_after is not None else backoff(item.attempts + 1, self.rng)
            circuit.hold(now + wait)
            return self._retry(item, str(exc), now + wait)
        except Unreachable as exc:
            circuit.failed(now)
            return self._retry(item, str(exc), now + backoff(item.attempts + 1, self.rng))
        except Rejected as exc:
            circuit.succeeded()  # it answered: the line is fine, this receipt is not
            log.error("ticket %s/%s refused by Facturapi: %s", item.branch, item.number, exc)
            self.receipts.refused(item.ticket_id, str(exc))
            return "stopped", f"ticket {item.number}: {exc}"
        circuit.succeeded()
        pushed = _pushed(answer)
        if pushed.total is None or abs(pushed.total - item.total) > TOLERANCE:
            error = (f"Facturapi's receipt {pushed.upstream_id} totals {pushed.total}, the ticket {item.total}: "
                     "not synced; check the ticket's insumo")  # fmt: skip
            log.error("ticket %s/%s: %s", item.branch, item.number, error)
            self.receipts.stop(item.ticket_id, error, pushed)
            return "stopped", f"ticket {item.number}: {error}"
        if self.receipts.pushed(item.ticket_id, pushed, self.clock()):
            self.on_link()
        return "pushed", None

    def _retry(self, item: Outgoing, error: str, at: datetime) -> tuple[str, str]:
        log.warning("ticket %s/%s not synced yet (try %d, next at %s UTC): %s", item.branch, item.number,
                    item.attempts + 1, f"{at:%H:%M:%S}", error)  # fmt: skip
        self.receipts.retry(item.ticket_id, error, at)
        return "retrying", error

    # -- the background thread ----------------------------------------------------------

    def start(self) -> None:
        if self._thread is None and self.clients:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="receipt-pusher", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """A ticket was stored: push it now, so its slip can carry the receipt's link."""
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                result = self.run_once()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad round
                log.exception("receipt push round failed")
                result = RoundResult()
            if result.pushed or result.retrying or result.stopped:
                continue  # more may be waiting: a burst of sales drains without pauses
            self._wake.wait(self._idle_wait())

    def _idle_wait(self) -> float:
        now = self.clock()
        moments = [self.receipts.next_due(list(self.clients))]
        moments += [c.open_until for c in self.circuits.values() if c.open_until and c.open_until > now]
        moments = [m for m in moments if m is not None]
        if not moments:
            return 5.0
        return min(5.0, max(0.05, (min(moments) - now).total_seconds()))


def _pushed(answer: dict) -> Pushed:
    total = answer.get("total")
    return Pushed(
        upstream_id=str(answer.get("id") or ""),
        key=answer.get("key"),
        self_invoice_url=answer.get("self_invoice_url"),
        expires_at=parse_time(answer.get("expires_at")),
        status=answer.get("status"),
        total=Decimal(str(total)) if total is not None else None,
    )
