"""A fake network ESC/POS printer on 127.0.0.1, for tests: real TCP, real sockets.

    with FakePrinter() as fake:
        send(parse_printer(fake.url), data, name="t1")
        job = fake.wait_for_jobs(1)[0]
        print(read_escpos(job).text)

It records every byte of every connection (``jobs``: one ``bytes`` per finished
connection, in the order they ended), answers ``DLE EOT n`` (n = 1..4) with a status byte
built from ``paper_out``, ``cover_open`` and ``paper_low`` (online when all are False),
and behaves in one of four modes, switchable at any time:

- ``accept()``: normal; reads until the sender closes, then closes too;
- ``refuse()``: stops listening: new connections are refused;
- ``hang()``: accepts and never reads, so the sender's buffers fill up;
- ``drop_after(n)``: reads n bytes of each connection, then resets it.

Nothing here sleeps: waits are on sockets or conditions, with deadlines.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

from escpos_reader import Reading, read_escpos  # noqa: F401  (re-exported for the tests)

__all__ = ["FakePrinter", "read_escpos", "Reading"]


class FakePrinter:
    def __init__(self, host: str = "127.0.0.1", *, receive_buffer: int = 32 * 1024) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the fake printer listens on the loopback interface only")
        self.host = "127.0.0.1" if host == "localhost" else host
        self.receive_buffer = receive_buffer
        self.port = 0
        self.paper_out = False
        self.cover_open = False
        self.paper_low = False
        self.connections = 0  # accepted so far
        self._jobs: list[bytes] = []
        self._mode = "accept"
        self._drop_at = 0
        self._cond = threading.Condition()
        self._closing = False
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._handlers: list[threading.Thread] = []
        self._live: set[socket.socket] = set()

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> FakePrinter:
        self._listen()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            live = list(self._live)
        self._stop_listening()
        for conn in live:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv
            except OSError:
                pass
        for t in self._handlers:
            t.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    # -- modes ---------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    def accept(self) -> None:
        self._set_mode("accept")

    def hang(self) -> None:
        self._set_mode("hang")

    def drop_after(self, n: int) -> None:
        self._set_mode("drop", n)

    def refuse(self) -> None:
        with self._cond:
            self._mode = "refuse"
            self._cond.notify_all()
        self._stop_listening()

    def _set_mode(self, mode: str, drop_at: int = 0) -> None:
        with self._cond:
            self._mode, self._drop_at = mode, drop_at
            self._cond.notify_all()
        if self._listener is None:
            self._listen()

    # -- what was received ---------------------------------------------------------------

    @property
    def jobs(self) -> list[bytes]:
        with self._cond:
            return list(self._jobs)

    def wait_for_jobs(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """The jobs once at least ``count`` connections have ended; AssertionError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._jobs) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} jobs within {timeout} s, got {len(self._jobs)}")
                self._cond.wait(left)
            return list(self._jobs)

    def status_byte(self, n: int) -> int:
        """The answer to DLE EOT n: fixed bits 0x12, plus the state bits."""
        offline = self.paper_out or self.cover_open
        if n == 1:
            return 0x12 | (0x08 if offline else 0)
        if n == 2:
            return 0x12 | (0x04 if self.cover_open else 0) | (0x20 if self.paper_out else 0)
        if n == 4:
            return 0x12 | (0x60 if self.paper_out else 0) | (0x0C if self.paper_low else 0)
        return 0x12

    # -- sockets -------------------------------------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Small, so that a hung connection fills up fast (inherited by accepted sockets).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.bind((self.host, self.port))  # the same port again after refuse()
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._acceptor = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True, name="fake-printer")
        self._acceptor.start()

    def _stop_listening(self) -> None:
        sock, self._listener = self._listener, None
        if sock is None:
            return
        os.write(self._wake_w, b"x")
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
            self._acceptor = None
        sock.close()
        # drain the wake-up byte for the next listener
        while select.select([self._wake_r], [], [], 0)[0]:
            os.read(self._wake_r, 64)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            ready = select.select([listener, self._wake_r], [], [])[0]
            if self._wake_r in ready:
                return
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._cond:
                if self._closing:
                    conn.close()
                    return
                self.connections += 1
                self._live.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True, name="fake-printer-conn")
            self._handlers.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        received = bytearray()
        recent = b""  # the last two bytes, to find DLE EOT n across reads
        reset = False
        try:
            while True:
                with self._cond:
                    while self._mode == "hang" and not self._closing:
                        self._cond.wait()
                    if self._closing:
                        break
                    mode, drop_at = self._mode, self._drop_at
                want = 65536
                if mode == "drop":
                    want = drop_at - len(received)
                    if want <= 0:
                        reset = True
                        break
                    want = min(want, 65536)
                try:
                    chunk = conn.recv(want)
                except OSError:
                    break
                if not chunk:
                    break
                received += chunk
                window = recent + chunk
                answers = bytes(
                    self.status_byte(window[k + 2])
                    for k in range(len(window) - 2)
                    if window[k] == 0x10 and window[k + 1] == 0x04 and 1 <= window[k + 2] <= 4
                )
                recent = window[-2:]
                if answers:
                    try:
                        conn.sendall(answers)
                    except OSError:
                        break
        finally:
            with self._cond:
                self._jobs.append(bytes(received))  # recorded before the sender can see the close
                self._live.discard(conn)
                self._cond.notify_all()
            if reset:  # RST instead of FIN: what a printer that gives up mid-job looks like
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
