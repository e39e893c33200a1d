"""Builders shared by the tests: configs, valid insumos, request bodies, a real server."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

KEY_A = "b391655ac2242d85ddd36d37b482259b1b7dfc1c"
KEY_B = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"
BRANCH_A = "dsfhjkajslfd45646412"
BRANCH_A2 = "0dd6aebbea85662fd2fe2f76ce4258b3"
BRANCH_B = "sucursal-b-1"

CONFIG_TOML = """\
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"
threads = 16
max_body_kb = {max_body_kb}

[upstream]
kind = "sandbox"
{upstream_extra}
[database]
url = "{database_url}"

[[companies]]
key = "{key_a}"
username = "tepox"
password = "tepox"
rfc = "EKU9003173C9"
legal_name = "ESCUELA KEMPER URGATE"
tax_regime = "601"
periodicity = "day"
self_invoice_days = 7
portal_url = "https://facturacion.example.com/{{company}}/{{branch}}/{{ticket}}"
{company_a_extra}
[[companies.branches]]
id = "{branch_a}"
name = "Centro"
postal_code = "68050"
timezone = "America/Mexico_City"
global_series = "FG"
printer = "file:prints/"

[[companies.branches]]
id = "{branch_a2}"
name = "Norte"
postal_code = "68000"
timezone = "America/Mexico_City"
global_series = "FN"
printer = "none"

[[companies]]
key = "{key_b}"
username = "otra"
password = "otra-clave"
rfc = "XIA190128J61"
legal_name = "XENON INDUSTRIAL ARTICLES"
tax_regime = "601"
periodicity = "month"
self_invoice_days = 3
portal_url = "https://facturacion.example.com/{{company}}/{{branch}}/{{ticket}}"

[[companies.branches]]
id = "{branch_b}"
name = "Unica"
postal_code = "06600"
timezone = "America/Cancun"
global_series = "G"
printer = "none"
"""


# Company A's Facturapi test key, when a test puts it on Facturapi (the fake's org).
FACTURAPI_KEY_A = "sk_test_companyA0000000000000000"


def write_config(directory: Path, *, port: int = 8572, max_body_kb: int = 256, facturapi_url: str | None = None,
                 qr_wait: float = 0, database_url: str = "") -> Path:  # fmt: skip
    """The test configuration; with `facturapi_url`, company A uses Facturapi there (its
    key in a file beside the config), company B stays on the sandbox; with
    `database_url`, the tickets are kept on that PostgreSQL database."""
    path = directory / "ticket-agent.toml"
    upstream_extra = company_a_extra = ""
    if facturapi_url:
        (directory / "facturapi.key").write_text(FACTURAPI_KEY_A + "\n", encoding="utf-8")
        upstream_extra = f'facturapi_url = "{facturapi_url}"\ntimeout = 5\nqr_wait = {qr_wait}\n'
        company_a_extra = 'upstream = "facturapi"\n\n[companies.facturapi]\napi_key_file = "facturapi.key"\n'
    path.write_text(
        CONFIG_TOML.format(
            upstream_extra=upstream_extra,
            company_a_extra=company_a_extra,
            port=port,
            data_dir=(directory / "data").as_posix(),
            max_body_kb=max_body_kb,
            database_url=database_url,
            key_a=KEY_A,
            key_b=KEY_B,
            branch_a=BRANCH_A,
            branch_a2=BRANCH_A2,
            branch_b=BRANCH_B,
        ),
        encoding="utf-8",
    )
    return path


def basic(user: str = "tepox", password: str = "tepox") -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AUTH_A = basic()
AUTH_B = basic("otra", "otra-clave")


def insumo_for(total: str | Decimal, fecha: str = "2026-11-20T11:09:46", payment_form: str = "01") -> str:
    """A valid one-item insumo for a tax-included total at IVA 16%."""
    total = Decimal(total)
    base = (total / Decimal("1.16")).quantize(Decimal("0.01"), ROUND_HALF_UP)
    iva = total - base
    return "\n".join(
        [
            "00|CFD33BASE|QA|4.0|",
            f"01|A|1|{fecha}|{payment_form}|MXN|1|{base}|0.00|{total}|68050|",
            f"02|01010101|SKU-1|1|H87|Pieza|Venta de mostrador|{base}|{base}|0.00|02|",
            f"03|002|Tasa|0.160000|{base}|{iva}|",
        ]
    )


def ticket_body(number: str = "12A31", total: str = "12.36", branch: str = BRANCH_A,
                fecha: str = "2026-11-20T11:09:46", **extra) -> dict:
    body = {
        "fecha": fecha,
        "insumo": insumo_for(total, fecha),
        "monto": Decimal(total),
        "numeroTicket": number,
        "sucursal": branch,
    }
    body.update(extra)
    return body


def dumps(body: dict) -> str:
    return json.dumps(body, default=lambda d: float(d) if isinstance(d, Decimal) else str(d))


def put_json(client, path: str, body, headers=None):
    return client.put(path, data=body if isinstance(body, (str, bytes)) else dumps(body),
                      headers={**(AUTH_A if headers is None else headers), "Content-Type": "application/json"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """Poll until the server accepts connections (or died, or the deadline passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            output = getattr(proc, "output", None)
            text = output.text() if output else (proc.stderr.read() if proc.stderr else "")
            raise RuntimeError(f"server exited with {proc.returncode}: {text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class ServerOutput:
    """Reads a server's stdout and stderr as they come and keeps the lines: a full pipe
    would block the agent's logging and so the agent itself."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []  # both streams, in arrival order
        self.by_stream: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._threads = [threading.Thread(target=self._drain, args=(stream, name), daemon=True)
                         for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for thread in self._threads:
            thread.start()

    def _drain(self, stream, name: str) -> None:
        try:
            for line in stream:
                self.lines.append(line)
                self.by_stream[name].append(line)
        except (OSError, ValueError):  # the pipe was closed by stop_server
            pass

    def join(self, timeout: float = 10.0) -> None:
        """Wait until both streams ended (the process exited)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def text(self) -> str:
        return "".join(self.lines)

    def stdout(self) -> str:
        return "".join(self.by_stream["stdout"])

    def stderr(self) -> str:
        return "".join(self.by_stream["stderr"])

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def wait_for(self, *needles: str, timeout: float = 10.0) -> str:
        """Wait until every needle appeared in the output; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while not all(any(n in line for line in list(self.lines)) for n in needles):
            finished = not any(thread.is_alive() for thread in self._threads)
            if finished or time.monotonic() > deadline:
                raise AssertionError(f"server output never mentioned {needles}; it printed:\n{self.text()}")
            time.sleep(0.02)
        return self.text()


def start_server(args: list[str], cwd: Path, port: int, env: dict | None = None) -> subprocess.Popen:
    """A real `ticket-agent serve` process (waitress, SQLite file) in its own directory;
    its output is read as it comes into `proc.output` (a ServerOutput)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("TICKET_AGENT_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.output = ServerOutput(proc)
    wait_for_port(port, proc)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    output = getattr(proc, "output", None)
    if output is not None:
        output.join()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


class LocalClock:
    """A clock stopped at a Mexico City wall time, moved by setting `now`."""

    def __init__(self, text: str):
        from datetime import datetime
        from zoneinfo import ZoneInfo

        self.now = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("America/Mexico_City"))

    def __call__(self):
        return self.now
