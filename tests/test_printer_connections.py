"""Printer connection strings, sending a job and reading a printer's status.

Network printers are a FakePrinter on 127.0.0.1 (real TCP); devices are a named pipe;
CUPS is a fake `lp` on the PATH.  Nothing sleeps: every wait has a deadline."""
from __future__ import annotations

import os
import select
import stat
import sys
import threading
import time
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from fake_printer import FakePrinter, read_escpos

from printer.connections import PrinterError, PrinterSpec, file_stem, parse_printer, send, status
from printer.slip import Layout, Slip, render_escpos, render_png

URL = "https://facturacion.example.com/b391655ac2242d85ddd36d37b482259b/centro/T-1001"
MARGIN = 1.0  # seconds a timed-out call may take beyond its timeout on a busy machine


def slip() -> Slip:
    return Slip("ESCUELA KEMPER URGATE", "Centro", "T-1001", datetime(2026, 11, 20, 13, 45),
                Decimal("1234.56"), date(2026, 11, 27), URL)


@pytest.fixture
def fake():
    with FakePrinter() as printer:
        yield printer


class Timer:
    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.monotonic() - self.start


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, target, options",
    [
        ("tcp://192.168.1.50:9100", "tcp", "192.168.1.50", {"port": 9100}),
        ("tcp://192.168.1.50", "tcp", "192.168.1.50", {"port": 9100}),
        ("TCP://Caja-1.local:9101", "tcp", "caja-1.local", {"port": 9101}),
        ("tcp://[fe80::1]:9100", "tcp", "fe80::1", {"port": 9100}),
        (" tcp://10.0.0.7:9100/ ", "tcp", "10.0.0.7", {"port": 9100}),
        ("usb://04b8:0202", "usb", "04b8:0202", {"vendor_id": 0x04B8, "product_id": 0x0202, "in_ep": 0x82, "out_ep": 0x01}),
        ("usb://0x0416:0x5011?in_ep=0x81&out_ep=3", "usb", "0416:5011", {"vendor_id": 0x0416, "product_id": 0x5011, "in_ep": 0x81, "out_ep": 3}),
        ("serial:///dev/ttyS0?baudrate=9600", "serial", "/dev/ttyS0",
         {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1, "rtscts": False, "dsrdtr": False, "xonxoff": False}),
        ("serial:/dev/ttyUSB0", "serial", "/dev/ttyUSB0",
         {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1, "rtscts": False, "dsrdtr": False, "xonxoff": False}),
        ("serial://COM3?baudrate=115200&parity=e&stopbits=2&rtscts=true", "serial", "COM3",
         {"baudrate": 115200, "bytesize": 8, "parity": "E", "stopbits": 2, "rtscts": True, "dsrdtr": False, "xonxoff": False}),
        ("cups://Caja1", "cups", "Caja1", {}),
        ("cups://EPSON_TM-T20II", "cups", "EPSON_TM-T20II", {}),
        ("file:/dev/usb/lp0", "file", "/dev/usb/lp0", {}),
        ("file:///dev/usb/lp0", "file", "/dev/usb/lp0", {}),
        ("file:data/prints/", "folder", "data/prints/", {}),
        ("none", "none", "", {}),
        (" None ", "none", "", {}),
    ],
)
def test_parse_every_kind(text, kind, target, options):
    spec = parse_printer(text)
    assert spec == PrinterSpec(kind, target, options)
    assert parse_printer(str(spec)) == spec  # str() is a connection string for messages


def test_file_is_a_folder_or_a_file_by_what_is_there(tmp_path):
    existing_file = tmp_path / "slips.bin"
    existing_file.write_bytes(b"")
    assert parse_printer(f"file:{existing_file}").kind == "file"
    assert parse_printer(f"file:{tmp_path}").kind == "folder"  # an existing folder
    assert parse_printer(f"file:{tmp_path}/prints/").kind == "folder"  # ends with /
    assert parse_printer(f"file:{tmp_path}/prints").kind == "folder"  # not there yet: created on first job
    assert parse_printer("file:/dev/usb/lp9").kind == "file"  # a device, even when unplugged
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert parse_printer(f"file:{pipe}").kind == "file"
    assert parse_printer(f"file://{tmp_path}/x/").kind == "folder"
    assert parse_printer(f"file://localhost{existing_file}") == PrinterSpec("file", str(existing_file), {})


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty; write \"none\""),
        ("   ", "empty"),
        ("printer", "not a printer connection string; expected one of"),
        ("lpt1:", "unknown printer kind 'lpt1:'"),
        ("http://192.168.1.50:9100", 'a network printer is "tcp://HOST:9100"'),
        ("tcp:192.168.1.50:9100", "write tcp:// before the address"),
        ("tcp://", "address is missing"),
        ("tcp://:9100", "address is missing"),
        ("tcp://printer:99999", "port '99999' is not a number from 1 to 65535"),
        ("tcp://printer:abc", "port 'abc' is not a number"),
        ("tcp://printer:", "port is missing"),
        ("tcp://printer:9100/queue", "unexpected '/queue'"),
        ("tcp://printer:9100?timeout=3", "the only option of a network printer is ?confirm=no"),
        ("tcp://user:pw@printer:9100", "no user name or password"),
        ("tcp://bad_host!:9100", "not a host name"),
        ("usb://04b8", "vendor and product ids in hex"),
        ("usb://zz:0202", "vendor and product ids in hex"),
        ("usb:04b8:0202", "write usb:// before"),
        ("usb://04b8:0202?speed=1", "unknown option 'speed'"),
        ("usb://04b8:0202?out_ep=0x100", "not a USB endpoint"),
        ("serial://", "serial port is missing"),
        ("serial:///dev/ttyS0?baudrate=fast", "baudrate='fast'"),
        ("serial:///dev/ttyS0?parity=X", "parity='X'"),
        ("serial:///dev/ttyS0?bytesize=9", "bytesize='9'"),
        ("serial:///dev/ttyS0?speed=9600", "unknown option 'speed'"),
        ("serial:///dev/ttyS0?baudrate=9600&baudrate=19200", "given twice"),
        ("serial:///dev/ttyS0?rtscts=maybe", "must be true or false"),
        ("cups://", "queue name is missing"),
        ("cups://My%20Queue", "not a CUPS queue name"),
        ("cups://Caja1/extra", "unexpected '/extra'"),
        ("file:", "a path is missing"),
        ("file://otherhost/dev/usb/lp0", "on this computer"),
    ],
)
def test_bad_strings_say_what_is_wrong(text, message):
    with pytest.raises(ValueError) as err:
        parse_printer(text)
    assert message in str(err.value)


def test_a_non_string_is_refused():
    with pytest.raises(ValueError, match="must be text"):
        parse_printer(None)  # type: ignore[arg-type]


# -- folder, file, none -----------------------------------------------------------------


def test_folder_writes_bin_and_png(tmp_path):
    folder = tmp_path / "data" / "prints"  # not there yet
    spec = parse_printer(f"file:{folder}")
    data = render_escpos(slip())
    png = render_png(slip(), Layout())
    send(spec, data, name="centro_T-1001_7", preview=png)
    assert (folder / "centro_T-1001_7.bin").read_bytes() == data
    assert (folder / "centro_T-1001_7.png").read_bytes() == png
    assert sorted(p.name for p in folder.iterdir()) == ["centro_T-1001_7.bin", "centro_T-1001_7.png"]  # no temp files left
    # the same job again (a retry) replaces its files: still one slip
    send(spec, b"again", name="centro_T-1001_7", preview=None)
    assert (folder / "centro_T-1001_7.bin").read_bytes() == b"again"
    assert len(list(folder.iterdir())) == 2


def test_folder_writes_atomically(tmp_path, monkeypatch):
    spec = parse_printer(f"file:{tmp_path}/")
    renames = []
    real_replace = os.replace

    def watching_replace(src, dst):
        # at the moment of the rename the temporary file is complete and hidden
        renames.append((Path(src), Path(dst), Path(src).read_bytes()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    send(spec, b"\x1b@slip", name="job1", preview=b"\x89PNG-preview")
    assert [(dst.name, content) for _, dst, content in renames] == [("job1.png", b"\x89PNG-preview"), ("job1.bin", b"\x1b@slip")]
    for src, dst, _ in renames:
        assert src.parent == dst.parent and src.name.startswith(".") and not src.exists()


def test_a_failed_folder_write_leaves_no_partial_file(tmp_path, monkeypatch):
    spec = parse_printer(f"file:{tmp_path}/")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PrinterError, match="No space left on device"):
        send(spec, b"data", name="job1", preview=b"png")
    assert list(tmp_path.iterdir()) == []


def test_folder_names_stay_inside_the_folder_and_distinct(tmp_path):
    spec = parse_printer(f"file:{tmp_path}/")
    for name in ("../escape", "a/b", "a_b", ".hidden", "Año 1"):
        send(spec, name.encode(), name=name)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(file_stem(n) + ".bin" for n in ("../escape", "a/b", "a_b", ".hidden", "Año 1"))
    assert len(names) == 5 and not any(n.startswith(".") for n in names)
    assert (tmp_path / (file_stem("a/b") + ".bin")).read_bytes() == b"a/b"
    assert not (tmp_path.parent / "escape.bin").exists()


def test_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    spec = PrinterSpec("folder", str(tmp_path / "afile" / "prints"), {})
    with pytest.raises(PrinterError, match=r"printer file:.*afile/prints \(job j\): cannot create the folder"):
        send(spec, b"x", name="j")


def test_file_appends_the_bytes(tmp_path):
    target = tmp_path / "printer.out"
    target.write_bytes(b"")
    spec = parse_printer(f"file:{target}")
    assert spec.kind == "file"
    data = render_escpos(slip())
    send(spec, data, name="a")
    send(spec, data, name="b")
    assert target.read_bytes() == data + data


def test_file_device_that_is_not_there(tmp_path):
    spec = parse_printer("file:/dev/usb/lp-not-here")
    with pytest.raises(PrinterError, match="does not exist: is the printer plugged in"):
        send(spec, b"x", name="j")
    assert not Path("/dev/usb/lp-not-here").exists()  # never created as a plain file


def test_file_device_reads_everything(tmp_path):
    pipe = tmp_path / "lp0"
    os.mkfifo(pipe)
    data = os.urandom(300_000)  # more than a pipe holds: the writer must wait for the reader
    reader_fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    got = bytearray()

    def printer():
        deadline = time.monotonic() + 5
        while len(got) < len(data) and time.monotonic() < deadline:
            if select.select([reader_fd], [], [], deadline - time.monotonic())[0]:
                got.extend(os.read(reader_fd, 65536))

    reader = threading.Thread(target=printer)
    reader.start()
    try:
        send(parse_printer(f"file:{pipe}"), data, name="j", timeout=5)
        reader.join(timeout=5)
    finally:
        os.close(reader_fd)
    assert bytes(got) == data


def test_file_device_with_nobody_behind_it(tmp_path):
    pipe = tmp_path / "lp0"
    os.mkfifo(pipe)
    with Timer() as t, pytest.raises(PrinterError, match="nothing is connected behind it"):
        send(parse_printer(f"file:{pipe}"), b"x", name="j", timeout=2)
    assert t.elapsed < 1


def test_file_device_that_stops_taking_data_times_out(tmp_path):
    pipe = tmp_path / "lp0"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
    try:
        with Timer() as t, pytest.raises(PrinterError, match="did not accept the data within 0.5 s"):
            send(parse_printer(f"file:{pipe}"), b"x" * 1_000_000, name="j", timeout=0.5)
        assert 0.4 < t.elapsed < 0.5 + MARGIN
    finally:
        os.close(reader)


def test_none_discards(tmp_path):
    send(parse_printer("none"), b"anything", name="j")
    assert status(parse_printer("none")) is None


def test_kinds_that_cannot_answer_a_status(tmp_path):
    assert status(parse_printer(f"file:{tmp_path}/")) is None
    target = tmp_path / "out"
    target.write_bytes(b"")
    assert status(parse_printer(f"file:{target}")) is None
    assert status(parse_printer("cups://Caja1")) is None


def test_send_checks_its_arguments(tmp_path):
    spec = parse_printer("none")
    with pytest.raises(TypeError):
        send(spec, "text", name="j")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        send(spec, b"x", name="")
    with pytest.raises(ValueError, match="timeout"):
        send(spec, b"x", name="j", timeout=0)


# -- network printer (FakePrinter, real TCP on 127.0.0.1) --------------------------------


STATUS_REQUEST = b"\x10\x04\x01"  # DLE EOT 1: the printer's answer proves it took the job


def test_a_job_arrives_whole(fake):
    data = render_escpos(slip(), Layout(paper_mm=58, native_qr=False))
    send(parse_printer(fake.url), data, name="T-1001")
    assert fake.wait_for_jobs(1) == [data + STATUS_REQUEST]
    assert fake.connections == 1  # one connection per job, the status request included
    printed = read_escpos(fake.jobs[0])
    assert "Total: $1,234.56" in printed.text and printed.cuts == [1]


def test_a_native_qr_job_arrives_with_its_url(fake):
    send(parse_printer(fake.url), render_escpos(slip()), name="T-1001")
    assert read_escpos(fake.wait_for_jobs(1)[0]).qr_data == URL.encode()


def test_a_big_job_arrives_whole(fake):
    data = os.urandom(3_000_000)
    send(parse_printer(fake.url), data, name="big", timeout=10)
    assert fake.wait_for_jobs(1) == [data + STATUS_REQUEST]


def test_status_requests_inside_an_image_do_not_cut_the_job_short(fake):
    # Raster bytes can spell DLE EOT 1; the printer answers those early, and closing on
    # the first answer with the others unread would reset the connection mid-slip.
    data = (b"\x00" * 100_000 + STATUS_REQUEST) * 30
    send(parse_printer(fake.url), data, name="raster", timeout=10)
    assert fake.wait_for_jobs(1) == [data + STATUS_REQUEST]


def test_jobs_in_a_row_each_use_their_own_connection(fake):
    spec = parse_printer(fake.url)
    for i in range(5):
        send(spec, f"job {i}\n".encode(), name=f"j{i}")
    assert fake.wait_for_jobs(5) == [f"job {i}\n".encode() + STATUS_REQUEST for i in range(5)]
    assert fake.connections == 5


def test_refused_fails_quickly(fake):
    spec = parse_printer(fake.url)
    fake.refuse()
    with Timer() as t, pytest.raises(PrinterError) as err:
        send(spec, b"\x1b@hola", name="T-1", timeout=5)
    assert t.elapsed < 1
    assert str(err.value).startswith(f"printer {fake.url} (job T-1): refused the connection")
    assert err.value.printer == fake.url
    # the printer comes back: the next attempt (the worker's retry) prints
    fake.accept()
    send(spec, b"\x1b@hola", name="T-1")
    assert fake.wait_for_jobs(1) == [b"\x1b@hola" + STATUS_REQUEST]


def test_a_printer_that_never_reads_times_out(fake):
    spec = parse_printer(fake.url)
    fake.hang()
    payload = b"\x00" * 16_000_000  # far more than the socket buffers of both ends hold
    with Timer() as t, pytest.raises(PrinterError) as err:
        send(spec, payload, name="T-2", timeout=1.0)
    assert 0.9 < t.elapsed < 1.0 + MARGIN
    assert "took no status request within 1 s" in str(err.value)
    assert fake.connections == 1  # no retry inside send


@pytest.mark.parametrize("size, drop_at", [(410, 100), (2_000_000, 65536)])
def test_a_printer_that_drops_the_connection_mid_job(fake, size, drop_at):
    spec = parse_printer(fake.url)
    fake.drop_after(drop_at)
    with Timer() as t, pytest.raises(PrinterError) as err:
        send(spec, b"\x1b@" + b"x" * (size - 2), name="T-4", timeout=5)
    assert "closed the connection in the middle of the job" in str(err.value)
    assert t.elapsed < 5
    assert fake.wait_for_jobs(1)[0] == (b"\x1b@" + b"x" * (size - 2))[:drop_at]
    assert fake.connections == 1


# -- status -------------------------------------------------------------------------------


def test_status_reads_the_printers_answer(fake):
    spec = parse_printer(fake.url)
    assert status(spec) == "online"
    fake.paper_low = True
    assert status(spec) == "online, paper low"
    fake.paper_low = False
    fake.paper_out = True
    assert status(spec) == "paper out"
    fake.paper_out = False
    fake.cover_open = True
    assert status(spec) == "cover open"
    fake.cover_open = False
    assert status(spec) == "online"
    # each status is one short connection of DLE EOT requests, nothing printed
    for job in fake.wait_for_jobs(5):
        assert set(read_escpos(job).status_requests) <= {1, 2, 3, 4} and read_escpos(job).text == ""


def test_status_of_a_hung_printer_raises_within_the_timeout(fake):
    spec = parse_printer(fake.url)
    fake.hang()
    with Timer() as t, pytest.raises(PrinterError, match="did not answer the status request within 0.5 s"):
        status(spec, timeout=0.5)
    assert 0.4 < t.elapsed < 0.5 + MARGIN


def test_status_of_a_refusing_printer_raises_quickly(fake):
    spec = parse_printer(fake.url)
    fake.refuse()
    with Timer() as t, pytest.raises(PrinterError, match="refused the connection"):
        status(spec, timeout=2)
    assert t.elapsed < 1


# -- cups (a fake lp on the PATH) ---------------------------------------------------------


def fake_lp(tmp_path: Path, monkeypatch, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    lp = bindir / "lp"
    lp.write_text("#!/bin/sh\n" + body)
    lp.chmod(lp.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bindir


@pytest.mark.skipif(sys.platform == "win32", reason="shell script as lp")
def test_cups_sends_raw_with_lp(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    fake_lp(tmp_path, monkeypatch, f'printf "%s\\n" "$@" > "{out}/args"\ncat > "{out}/data"\necho "request id is Caja1-7 (0 file(s))"\n')
    data = render_escpos(slip())
    send(parse_printer("cups://Caja1"), data, name="centro_T-1001_7")
    assert (out / "data").read_bytes() == data
    assert (out / "args").read_text().splitlines() == ["-d", "Caja1", "-o", "raw", "-t", "centro_T-1001_7"]


@pytest.mark.skipif(sys.platform == "win32", reason="shell script as lp")
def test_cups_failure_is_reported(tmp_path, monkeypatch):
    fake_lp(tmp_path, monkeypatch, 'cat > /dev/null\necho "lp: The printer or class does not exist." >&2\nexit 1\n')
    with pytest.raises(PrinterError, match=r"printer cups://Nope \(job j\): lp failed \(exit status 1\): lp: The printer or class does not exist\."):
        send(parse_printer("cups://Nope"), b"x", name="j")


@pytest.mark.skipif(sys.platform == "win32", reason="shell script as lp")
def test_cups_that_hangs_times_out(tmp_path, monkeypatch):
    fake_lp(tmp_path, monkeypatch, "exec sleep 60\n")
    with Timer() as t, pytest.raises(PrinterError, match="lp did not finish within 0.5 s"):
        send(parse_printer("cups://Caja1"), b"x", name="j", timeout=0.5)
    assert t.elapsed < 0.5 + MARGIN


def test_cups_without_lp(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PrinterError, match="the lp command is not installed"):
        send(parse_printer("cups://Caja1"), b"x", name="j")


# -- usb and serial: optional packages ----------------------------------------------------


def test_usb_without_pyusb_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "usb", None)
    monkeypatch.setitem(sys.modules, "usb.core", None)
    spec = parse_printer("usb://04b8:0202")
    with pytest.raises(PrinterError, match=r"printer usb://04b8:0202 \(job j\): usb printing needs the pyusb package"):
        send(spec, b"x", name="j")
    with pytest.raises(PrinterError, match="usb printing needs the pyusb package"):
        status(spec)


def test_serial_without_pyserial_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)
    spec = parse_printer("serial:///dev/ttyS0?baudrate=9600")
    with pytest.raises(PrinterError, match="serial printing needs the pyserial package"):
        send(spec, b"x", name="j")
    with pytest.raises(PrinterError, match="serial printing needs the pyserial package"):
        status(spec)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_serial_sends_through_a_port():
    pytest.importorskip("serial")
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    data = render_escpos(slip(), Layout(native_qr=False))  # ~20 KB: more than the tty buffers
    got = bytearray()

    def printer():
        deadline = time.monotonic() + 5
        while len(got) < len(data) and time.monotonic() < deadline:
            if select.select([master], [], [], deadline - time.monotonic())[0]:
                got.extend(os.read(master, 65536))

    reader = threading.Thread(target=printer)
    reader.start()
    try:
        send(parse_printer(f"serial://{os.ttyname(slave)}?baudrate=19200"), data, name="j", timeout=5)
        reader.join(timeout=5)
        assert bytes(got) == data
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_serial_port_that_does_not_take_the_data_times_out():
    pytest.importorskip("serial")
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    try:
        with Timer() as t, pytest.raises(PrinterError, match="did not accept the data within 0.5 s"):
            send(parse_printer(f"serial://{os.ttyname(slave)}"), b"x" * 200_000, name="j", timeout=0.5)
        assert t.elapsed < 0.5 + MARGIN
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_serial_status_answered_and_unanswered(tmp_path):
    pytest.importorskip("serial")
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    stop = threading.Event()

    def printer():  # answers DLE EOT n like a printer with its cover open
        buf = b""
        while not stop.is_set():
            if select.select([master], [], [], 0.05)[0]:
                buf += os.read(master, 64)
                while len(buf) >= 3 and buf[:2] == b"\x10\x04":
                    n, buf = buf[2], buf[3:]
                    os.write(master, bytes([{1: 0x1A, 2: 0x16, 4: 0x12}.get(n, 0x12)]))

    try:
        spec = parse_printer(f"serial://{os.ttyname(slave)}")
        with Timer() as t, pytest.raises(PrinterError, match="did not answer the status request within 0.3 s"):
            status(spec, timeout=0.3)
        assert t.elapsed < 0.3 + MARGIN
        while select.select([master], [], [], 0)[0]:  # what that unanswered request left
            os.read(master, 64)
        answering = threading.Thread(target=printer)
        answering.start()
        try:
            assert status(spec, timeout=3) == "cover open"
        finally:
            stop.set()
            answering.join()
    finally:
        os.close(master)
        os.close(slave)


def test_a_small_slip_to_a_hanging_printer_is_not_taken_for_printed(fake):
    # A few hundred bytes fit in the socket buffers of a printer that never reads, so TCP
    # acknowledges them: only the printer's own status answer proves the slip was taken.
    fake.hang()
    spec = parse_printer(fake.url)
    with Timer() as t, pytest.raises(PrinterError) as err:
        send(spec, render_escpos(slip()), name="T-5", timeout=1.0)
    assert t.elapsed < 1.0 + MARGIN
    assert "took no status request" in str(err.value)


def test_without_confirmation_a_printer_is_trusted_once_tcp_acknowledges(fake):
    spec = parse_printer(fake.url + "?confirm=no")
    assert str(spec) == fake.url + "?confirm=no"
    send(spec, b"\x1b@hola", name="T-6")
    assert fake.wait_for_jobs(1) == [b"\x1b@hola"]

