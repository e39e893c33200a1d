"""Where the agent's log lines go: standard error (journald under systemd) and, while
`serve` runs, a rotating file in the data directory, `logs/ticket-agent.log`.

Every handler installed here masks Facturapi secret keys (`sk_test_...`, `sk_live_...`)
in the message and in any traceback: the code never logs one, and this is the safety net
for the day an exception text carries one. See docs/operations.md for what is logged.
"""
from __future__ import annotations

import logging
import logging.handlers
import queue
import re
import sys
import threading
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DIR = "logs"
LOG_FILE = "ticket-agent.log"
# 10 MB x 5 old files: months of a busy store's lines in 60 MB at most.
MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 5

_SECRET_KEY = re.compile(r"sk_(test|live)_[A-Za-z0-9]+")
# Marks the handlers this module installed, so a second setup replaces them instead of
# printing every line twice.
_OURS = "_ticket_agent_handler"


def mask_secrets(text: str) -> str:
    return _SECRET_KEY.sub(lambda m: f"sk_{m.group(1)}_***", text)


class MaskSecrets(logging.Filter):
    """Rewrites a record whose text holds a Facturapi secret key, before any handler
    formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatted here (the Formatter would do it later and cache it on the record)
            # so the traceback's text can be masked too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """Rotates on the file's position alone. The standard check stats the file twice and
    formats every record a second time to measure it: a cost paid on every request line.
    While the log's thread writes a batch, the file is flushed once, at its end."""

    batching = False

    def flush(self) -> None:
        if not self.batching:
            super().flush()

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        # May pass maxBytes by the one line that reached it.
        return self.maxBytes > 0 and self.stream.tell() >= self.maxBytes


class _BatchingStream(logging.StreamHandler):
    batching = False

    def flush(self) -> None:
        if not self.batching:
            super().flush()


def _ours(handler: logging.Handler) -> logging.Handler:
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(MaskSecrets())
    setattr(handler, _OURS, True)
    return handler


def setup(level: str | int = "INFO", stream=None) -> None:
    """Log lines of `level` and above to standard error."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False) and not isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
    root.addHandler(_ours(_BatchingStream(stream or sys.stderr)))
    root.setLevel(level)
    # fpdf2's font subsetting (fontTools) tells at INFO about every table of every PDF:
    # some 75 lines per global CFDI that bury the agent's own.
    logging.getLogger("fontTools").setLevel(logging.WARNING)


class _NotRequestLines(logging.Filter):
    """Keeps the line per request out of standard error once the log file has it: under
    systemd the journal would store every sale twice, and each write costs the sale time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == REQUEST_LOGGER and record.levelno < logging.WARNING)


REQUEST_LOGGER = "pos-ticket-agent.http"


class FileLog:
    """The log file of a running `serve`, and the thread that writes every line.

    Request threads only put their record on a queue: formatting and writing happen on
    one writer thread. Written from the request threads, every line took the handler's
    lock, and a thread holding it while Python switched threads stalled all the others:
    a third of the sales throughput under load."""

    def __init__(self, handler: logging.Handler):
        self.handler = handler
        root = logging.getLogger()
        self._targets = [h for h in root.handlers if getattr(h, _OURS, False)]
        for target in self._targets:
            target.addFilter(_REQUESTS_IN_FILE)
            root.removeHandler(target)
        self._targets.append(_ours(handler))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._front = _Enqueue(self._queue)
        root.addHandler(self._front)
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty() and len(batch) < 1000:
                batch.append(self._queue.get_nowait())
            # One write per batch, not per line: under load the lines come in bursts.
            for target in self._targets:
                target.batching = True
            try:
                for item in batch:
                    if item is None or isinstance(item, threading.Event):
                        continue
                    for target in self._targets:
                        if item.levelno >= target.level:
                            target.handle(item)
            finally:
                for target in self._targets:
                    target.batching = False
                    _flush(target)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if None in batch:
                return

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every line logged so far is written."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)
        for target in self._targets:
            _flush(target)

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self._front)
        self._queue.put(None)
        self._thread.join(5)
        try:
            self.handler.close()
        except OSError:  # the lines that could not be written are lost, not the shutdown
            pass
        for target in self._targets[:-1]:
            target.removeFilter(_REQUESTS_IN_FILE)
            root.addHandler(target)


def _flush(target: logging.Handler) -> None:
    # A full or read-only disk must cost the log its lines, never the agent its log
    # thread: lines already queued would pile up in memory with nobody to write them.
    try:
        target.flush()
    except OSError:
        pass


class _Enqueue(logging.Handler):
    def __init__(self, line_queue: queue.SimpleQueue):
        super().__init__()
        self._queue = line_queue

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: SimpleQueue.put is safe from any thread. The exception, if
        # any, is kept as text now: the traceback's frames change once this returns.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        self._queue.put(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does it
        self._queue.put(record)


def log_to_file(data_dir: Path, name: str = LOG_FILE) -> FileLog | None:
    """Also write the log to data_dir/logs/ticket-agent.log, rotated at 10 MB, 5 old files
    kept, through one writer thread. Only the `serve` process writes it (one writer per
    file: rotation is not safe across processes; agents sharing a PostgreSQL database and
    its data directory each get a file of their own, `file_name_of`). None, with a
    warning, if the folder cannot be written: a log file is not worth refusing sales for."""
    folder = Path(data_dir) / LOG_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        handler = _RotatingFile(folder / name, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8")
    except OSError as exc:
        logging.getLogger("pos-ticket-agent").warning("cannot write the log file in %s: %s; logging to standard "
                                                      "error only", folder, exc.strerror or exc)
        return None
    return FileLog(handler)


def file_name_of(host: str, port: int) -> str:
    """The log file of one of several `serve` processes sharing a data directory."""
    return f"ticket-agent-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}-{port}.log"


_REQUESTS_IN_FILE = _NotRequestLines()


def stop_file(file_log: FileLog | None) -> None:
    if file_log is not None:
        file_log.close()
