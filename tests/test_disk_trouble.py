"""A full disk or a data directory gone read-only: PUT /tickets answers 503 with a clear
text, the agent keeps running and answering, nothing half-written, and selling resumes by
itself once the disk is writable again.

The data directory is a real small filesystem (a tmpfs of its own, mounted for the test)
that a real `ticket-agent serve` writes its SQLite file and its log into; the disk is
filled with a real file and made read-only with a real remount. Mounting needs root: .ci/run
runs as root; elsewhere the tests are skipped, except under CI=true where they fail.
"""
from __future__ import annotations

import http.client
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from helpers import AUTH_A, KEY_A, dumps, free_port, start_server, stop_server, ticket_body, write_config

UNAVAILABLE = ("No se pudo guardar en la base de datos del agente (disco lleno, sin permisos o "
               "detenido); el ticket no se guardó. Intente de nuevo más tarde.")
SAVED = "se guardo correctamente"
HEADERS = {**AUTH_A, "Content-Type": "application/json"}


def _mount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB filesystem of its own, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        if os.geteuid() != 0:
            raise PermissionError("not root")
        _mount(disk, "size=6m,mode=0755")
    except (PermissionError, OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs ({exc}): .ci/run must run these tests as root")
        pytest.skip(f"needs root to mount a small filesystem ({exc})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True)


class Agent:
    def __init__(self, tmp_path: Path, data_dir: Path):
        self.port = free_port()
        config = write_config(tmp_path, port=self.port)
        config.write_text(config.read_text().replace((tmp_path / "data").as_posix(), data_dir.as_posix()))
        self.data_dir = data_dir
        self.proc = start_server(["--config", str(config)], cwd=tmp_path, port=self.port)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        self.conn.request(method, path, body=body.encode() if body else None, headers=HEADERS)
        response = self.conn.getresponse()
        return response.status, response.read().decode()

    def sell(self, number: str) -> tuple[int, str]:
        return self.call("PUT", f"/{KEY_A}/tickets", dumps(ticket_body(number)))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.conn.close()
        stop_server(self.proc)


def stored_numbers(data_dir: Path) -> set[str]:
    db = sqlite3.connect(data_dir / "tickets.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {number for (number,) in db.execute("SELECT number FROM ticket")}
    finally:
        db.close()


def fill(disk: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:  # the last partial block
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def test_a_full_disk_answers_503_and_selling_resumes_when_space_returns(tmp_path, small_disk):
    agent = Agent(tmp_path, small_disk / "data")
    acknowledged, refused = set(), []
    try:
        for n in range(20):
            assert agent.sell(f"F{n}") == (200, SAVED)
            acknowledged.add(f"F{n}")
        filler = fill(small_disk)

        # The WAL may still have room for a few tickets (they are safe: committed); the
        # first one that needs the disk to grow gets the 503.
        for n in range(20, 2000):
            status, text = agent.sell(f"F{n}")
            if status == 200:
                acknowledged.add(f"F{n}")
                continue
            assert (status, text) == (503, UNAVAILABLE)
            refused.append(f"F{n}")
            if len(refused) == 3:
                break
        assert len(refused) == 3, "the disk never filled up"

        # Still running and answering: the POS can ask about what it sold, health says why.
        assert agent.alive()
        assert agent.call("GET", f"/{KEY_A}/cfdis?noTicket=F1&sucursal=dsfhjkajslfd45646412")[0] in (200, 204)
        status, health = agent.call("GET", "/healthz")
        assert status == 503 and "full" in health, health

        filler.unlink()
        assert agent.sell("AFTER1") == (200, SAVED)
        acknowledged.add("AFTER1")
        status, health = agent.call("GET", "/healthz")
        assert json.loads(health)["checks"][0]["name"] == "database"
        assert not any(c["name"] == "database" and c["status"] == "fail" for c in json.loads(health)["checks"])
    finally:
        agent.stop()
    assert agent.proc.returncode == 0, agent.proc.output.tail()
    stored = stored_numbers(small_disk / "data")
    assert acknowledged <= stored
    assert not stored & set(refused), "a ticket answered 503 was stored"


@pytest.fixture
def ext4_disk(tmp_path):
    """A 32 MB ext4 filesystem on a loop device, mounted with errors=remount-ro: what a
    store PC's disk does when the kernel finds it failing."""
    image, disk = tmp_path / "disk.img", tmp_path / "ext4"
    disk.mkdir()
    try:
        if os.geteuid() != 0:
            raise PermissionError("not root")
        with open(image, "wb") as f:
            f.truncate(32 * 1024**2)
        subprocess.run(["mkfs.ext4", "-q", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(disk)], check=True,
                       capture_output=True)
    except (PermissionError, OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount an ext4 image on a loop device ({exc}): .ci/run must run these tests as root "
                        "with e2fsprogs installed")
        pytest.skip(f"needs root and loop devices to mount an ext4 image ({exc})")
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(disk)], capture_output=True, text=True).stdout.strip()
    yield disk, image, Path(source).name
    subprocess.run(["umount", str(disk)], check=False, capture_output=True)


def test_a_data_directory_gone_read_only_answers_503_and_loses_nothing(tmp_path, ext4_disk):
    disk, image, device = ext4_disk
    agent = Agent(tmp_path, disk / "data")
    acknowledged = set()
    try:
        for n in range(30):
            assert agent.sell(f"R{n}") == (200, SAVED)
            acknowledged.add(f"R{n}")
        # The kernel finds an error on the disk and remounts it read-only under the agent.
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("1")
        assert agent.sell("LOST1") == (503, UNAVAILABLE)
        assert agent.sell("LOST2") == (503, UNAVAILABLE)
        # Still running and answering what it can: the POS's lookups, the health page.
        assert agent.alive()
        assert agent.call("GET", f"/{KEY_A}/cfdis?noTicket=R1&sucursal=dsfhjkajslfd45646412")[0] in (200, 204)
        status, health = agent.call("GET", "/healthz")
        assert status == 503 and "Read-only file system" in health, health
    finally:
        agent.stop()
    assert agent.proc.returncode == 0, agent.proc.output.tail()

    # What the IT person does: unmount, check the disk, mount it again, start the agent.
    subprocess.run(["umount", str(disk)], check=True)
    fsck = subprocess.run(["e2fsck", "-fy", str(image)], check=False, capture_output=True)
    assert fsck.returncode in (0, 1), fsck.stdout  # 1: errors found and corrected
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(disk)], check=True)
    agent = Agent(tmp_path, disk / "data")
    try:
        assert agent.sell("LOST1") == (200, SAVED)  # the POS retries the refused sale
        acknowledged.add("LOST1")
    finally:
        agent.stop()
    stored = stored_numbers(disk / "data")
    assert stored == acknowledged, "a ticket acknowledged was lost, or one answered 503 was stored"
