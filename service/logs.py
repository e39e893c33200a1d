"""Where the agent's log lines go: standard error (journald under systemd) and, while
`serve` runs, a rotating file in the data directory, `logs/ticket-agent.log`.

Every handler installed here masks Facturapi secret keys (`sk_test_...`, `sk_live_...`)
in the message and in any traceback: the code never logs one, and this is the safety net
for the day an exception text carries one. See docs/operations.md for what is logged.
"""
from __future__ import annotations

import logging
import logging.handlers
import re
import sys
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
    formats every record a second time to measure it: a cost paid on every request line."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        # May pass maxBytes by the one line that reached it.
        return self.maxBytes > 0 and self.stream.tell() >= self.maxBytes


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
    root.addHandler(_ours(logging.StreamHandler(stream or sys.stderr)))
    root.setLevel(level)


def log_to_file(data_dir: Path) -> logging.Handler | None:
    """Also write the log to data_dir/logs/ticket-agent.log, rotated at 10 MB, 5 old files
    kept. Only the `serve` process writes it (one writer per file: rotation is not safe
    across processes). None, with a warning, if the folder cannot be written: a log
    file is not worth refusing sales for."""
    folder = Path(data_dir) / LOG_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        handler = _RotatingFile(folder / LOG_FILE, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8")
    except OSError as exc:
        logging.getLogger("pos-ticket-agent").warning("cannot write the log file in %s: %s; logging to standard "
                                                      "error only", folder, exc.strerror or exc)
        return None
    logging.getLogger().addHandler(_ours(handler))
    return handler


def stop_file(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
