"""Who gets to try a password, and how often.

Every failed login (a POS's Basic credentials, the panel's form) is counted per client
address. Past LIMIT failures within WINDOW seconds the address is throttled: further
attempts get a 429 with Retry-After, without their password being checked, so guessing is
capped at LIMIT tries a minute per address. A credential that already succeeded from the
address is let through even then: a POS that was selling keeps selling while something
on its own address (or a misconfigured terminal beside it) hammers the agent.

Credentials are remembered only as an HMAC under a key that lives in this process, never
in the clear; the same digests let a hashed password (agent.passwords) be derived once per
POS rather than on every ticket.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

log = logging.getLogger(__name__)

LIMIT = 10
WINDOW = 60.0
# Bounds on what an attacker can make us remember: addresses tracked, and credentials
# remembered as good per address.
MAX_ADDRESSES = 10_000
MAX_GOOD_PER_ADDRESS = 8


class Logins:
    def __init__(self, *, limit: int = LIMIT, window: float = WINDOW, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._good: OrderedDict[str, OrderedDict[bytes, None]] = OrderedDict()
        # company key -> digests of credentials that matched it (for hashed passwords)
        self._verified: dict[str, set[bytes]] = {}

    def digest(self, *parts: str) -> bytes:
        message = "\x00".join(parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def retry_after(self, address: str, credential: bytes) -> int | None:
        """Seconds the address must wait before this credential is checked; None: go on."""
        with self._lock:
            if address not in self._failures:
                return None
            failures = self._recent(address)
            if len(failures) < self.limit:
                return None
            if credential in self._good.get(address, ()):
                return None
            return max(1, math.ceil(failures[-self.limit] + self.window - self.clock()))

    def failed(self, address: str, reason: str) -> None:
        with self._lock:
            failures = self._recent(address)
            failures.append(self.clock())
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)
            count = len(failures)
        if count == self.limit:
            log.warning("login throttled for %s: %d failed attempts in %.0f s (last: %s); it now gets 429 "
                        "until a minute passes, credentials that worked from there before still pass",
                        address, count, self.window, reason)
        elif count < self.limit:
            log.warning("login refused from %s: %s", address, reason)

    def succeeded(self, address: str, credential: bytes) -> None:
        with self._lock:
            good = self._good.setdefault(address, OrderedDict())
            good[credential] = None
            good.move_to_end(credential)
            while len(good) > MAX_GOOD_PER_ADDRESS:
                good.popitem(last=False)
            self._good.move_to_end(address)
            while len(self._good) > MAX_ADDRESSES:
                self._good.popitem(last=False)

    def check(self, company, username: str, password: str) -> bool:
        """company.check_credentials, paying a hashed password's derivation once per credential."""
        if not company.password_hash:
            return company.check_credentials(username, password)
        credential = self.digest(company.key, username, password)
        verified = self._verified.setdefault(company.key, set())
        if credential in verified:
            return True
        if company.check_credentials(username, password):
            with self._lock:
                if len(verified) < MAX_ADDRESSES:
                    verified.add(credential)
            return True
        return False

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address)
        if failures is None:
            failures = self._failures[address] = deque()
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures
