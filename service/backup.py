"""`ticket-agent backup`: a consistent copy of the store while the agent keeps selling.

SQLite's online backup copies the database as of one moment. The database runs in WAL
mode, so the copy reads a snapshot while the writer keeps committing; the whole copy is
made in one step, because a step-by-step backup restarts each time another connection
writes, and with sales coming in it might never finish.

The copy is written beside PATH under a temporary name, checked with
`PRAGMA integrity_check`, and only then renamed to PATH: a failed or interrupted backup
never leaves a half file under PATH, and `--force` replaces an older backup only with a
good one. The CFDI files (XML, PDF) live in data_dir/cfdi, outside the database;
`--with-files` copies that folder too (see docs/operations.md).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent.db import DB_FILENAME

CFDI_DIR = "cfdi"
# How long the copy waits for a writer that holds the database's lock (a group commit
# takes milliseconds; this only matters on a very slow disk).
BUSY_TIMEOUT_SECONDS = 30


class BackupError(Exception):
    """The backup was not made; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int  # bytes
    tickets: int
    integrity: str  # "ok", or the problems integrity_check found
    files_path: Path | None = None  # the copy of data_dir/cfdi, with --with-files
    files: int = 0


def files_path_for(target: Path) -> Path:
    """Where --with-files puts the copy of data_dir/cfdi: `PATH.cfdi`, beside PATH."""
    return target.with_name(target.name + ".cfdi")


def backup(data_dir: Path, target: Path, *, force: bool = False, with_files: bool = False) -> BackupResult:
    source = data_dir / DB_FILENAME
    if not source.is_file():
        raise BackupError(f"No database at {source}: check --config (the data directory is server.data_dir).")
    target = Path(target)
    if target.is_dir():
        example = target / "tickets-backup.db"
        raise BackupError(f"{target} is a folder; give the path of the backup file, e.g. {example}.")
    if target.exists() and not force:
        raise BackupError(f"{target} already exists; use --force to overwrite it.")
    if not target.parent.is_dir():
        raise BackupError(f"Folder {target.parent} does not exist; create it first.")
    if target.resolve() == source.resolve():
        raise BackupError(f"{target} is the agent's own database; give another path.")
    files_target = files_path_for(target)
    if with_files and files_target.exists() and not force:
        raise BackupError(f"{files_target} already exists; use --force to overwrite it.")

    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _copy_database(source, partial)
        integrity, tickets = _check(partial)
        if integrity != "ok":
            raise BackupError(f"The copy failed its integrity check, so it was not kept: {integrity}. Run "
                              "`PRAGMA integrity_check` on the agent's database; restore a good backup if it fails too.")
        _fsync(partial)
        os.replace(partial, target)
        _fsync_dir(target.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"Cannot copy {source}: {exc}.") from None
    except OSError as exc:
        raise BackupError(f"Cannot write {target}: {exc.strerror or exc}.") from None
    finally:
        partial.unlink(missing_ok=True)

    copied = 0
    if with_files:
        # After the database: every file a CFDI row in the copy names was written before its
        # row was committed, so it is already there; files of later CFDIs come along too.
        try:
            copied = _copy_files(data_dir / CFDI_DIR, files_target)
        except OSError as exc:
            raise BackupError(f"The database was copied to {target}, but copying the CFDI files to {files_target} "
                              f"failed: {exc.strerror or exc}.") from None  # fmt: skip
    return BackupResult(target, target.stat().st_size, tickets, integrity, files_target if with_files else None, copied)


def _copy_database(source: Path, destination: Path) -> None:
    src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
    try:
        dst = sqlite3.connect(destination)
        try:
            src.backup(dst)  # pages=-1: the whole database in one step, one snapshot
            # The copy is one self-contained file: no -wal beside it to forget.
            dst.execute("PRAGMA journal_mode=DELETE")
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()


def _check(path: Path) -> tuple[str, int]:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
        tickets = db.execute("SELECT COUNT(*) FROM ticket").fetchone()[0]
    finally:
        db.close()
    return ("ok" if problems == ["ok"] else "; ".join(problems[:10])), tickets


def _copy_files(source: Path, destination: Path) -> int:
    if destination.exists():
        shutil.rmtree(destination)
    if not source.is_dir():
        destination.mkdir()  # no CFDI yet: an empty folder says so
        return 0
    shutil.copytree(source, destination)
    return sum(1 for p in destination.rglob("*") if p.is_file())


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return  # Windows cannot open a folder to fsync it; the rename is durable enough there
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
