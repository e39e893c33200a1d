"""Where slips go: printer connection strings, sending one job, asking a printer's status.

Plain values in: a connection string, the bytes of a job, a name.  Nothing here knows of
Flask, of the database or of the agent's configuration.

Connection strings (docs/printing.md describes each for a store's IT person):

    tcp://192.168.1.50:9100            network printer, raw port (9100 when left out)
    usb://04b8:0202                    USB printer by vendor:product id, hex (needs pyusb)
    serial:///dev/ttyS0?baudrate=9600  serial printer (needs pyserial)
    cups://Caja1                       a CUPS queue, sent raw with ``lp -d Caja1 -o raw``
    file:/dev/usb/lp0                  a device or file: the bytes are written to it
    file:data/prints/                  a folder: <name>.bin (and <name>.png) per job
    none                               printing off: jobs are discarded

``send`` makes one attempt and never retries: a retry could print a slip twice, so
retrying (with a backoff) is the caller's decision.  Every wait is bounded by ``timeout``.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

KINDS = ("tcp", "usb", "serial", "cups", "file", "folder", "none")

DEFAULT_TCP_PORT = 9100
USB_IN_EP = 0x82  # python-escpos defaults, right for Epson and most clones
USB_OUT_EP = 0x01

# After the last byte, how long to wait for the printer to close the connection (most do
# as soon as they have read everything) before taking the job as delivered anyway.
CLOSE_GRACE = 0.5

_EXAMPLES = (
    'expected one of: "tcp://192.168.1.50:9100", "usb://04b8:0202", "serial:///dev/ttyS0?baudrate=9600", '
    '"cups://QueueName", "file:/dev/usb/lp0", "file:data/prints/" (a folder) or "none"'
)


class PrinterError(Exception):
    """A job could not be printed, or a status not read.  ``str()`` is a clear English
    sentence naming the printer (its connection string) and the problem; ``printer``
    holds the connection string alone."""

    def __init__(self, message: str, *, printer: str | None = None) -> None:
        super().__init__(message)
        self.printer = printer


@dataclass(frozen=True)
class PrinterSpec:
    """A parsed connection string.  ``target``: tcp the host, usb "vvvv:pppp", serial the
    port, cups the queue, file and folder the path as written, none "".  ``options``:
    tcp {"port", "confirm" (False only)}, usb {"vendor_id", "product_id", "in_ep", "out_ep"}, serial {"baudrate",
    "bytesize", "parity", "stopbits", "rtscts", "dsrdtr", "xonxoff"}, others {}."""

    kind: str
    target: str
    options: dict = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.target}]" if ":" in self.target else self.target
            confirm = "" if self.options.get("confirm", True) else "?confirm=no"
            return f"tcp://{host}:{self.options.get('port', DEFAULT_TCP_PORT)}{confirm}"
        if self.kind == "usb":
            eps = [f"{k}=0x{self.options[k]:02x}" for k, d in (("in_ep", USB_IN_EP), ("out_ep", USB_OUT_EP))
                   if self.options.get(k, d) != d]
            return f"usb://{self.target}" + ("?" + "&".join(eps) if eps else "")
        if self.kind == "serial":
            o = {**_SERIAL_DEFAULTS, **self.options}
            extra = [f"{k}={str(o[k]).lower() if isinstance(o[k], bool) else o[k]}"
                     for k in _SERIAL_DEFAULTS if k != "baudrate" and o[k] != _SERIAL_DEFAULTS[k]]
            return f"serial://{self.target}?" + "&".join([f"baudrate={o['baudrate']}"] + extra)
        if self.kind == "cups":
            return f"cups://{self.target}"
        if self.kind in ("file", "folder"):
            return f"file:{self.target}"
        return self.kind


# -- parsing -----------------------------------------------------------------------------


def parse_printer(spec: str) -> PrinterSpec:
    """Parse a connection string; ValueError with a message saying what is wrong.

    ``file:PATH`` is a folder (kind "folder") when PATH ends with "/" or is an existing
    folder, and also when nothing exists at PATH yet, unless PATH is under /dev/: the
    folder is created by the first job.  It is a device or file (kind "file") when PATH
    is under /dev/ or names an existing file, device or pipe.  To write into one plain
    file, create it first."""
    if not isinstance(spec, str):
        raise ValueError(f"a printer connection string must be text, not {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise ValueError('the printer connection string is empty; write "none" for no printer')
    if text.lower() == "none":
        return PrinterSpec("none", "", {})
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ValueError(f"{text!r} is not a printer connection string; {_EXAMPLES}")
    if scheme == "file":
        return _parse_file(text, rest)
    parser = {"tcp": _parse_tcp, "usb": _parse_usb, "serial": _parse_serial, "cups": _parse_cups}.get(scheme)
    if parser is None:
        hint = ' (a network printer is "tcp://HOST:9100")' if scheme in ("http", "https", "ipp", "socket", "lpd", "raw") else ""
        raise ValueError(f"{text!r}: unknown printer kind {scheme + ':'!r}{hint}; {_EXAMPLES}")
    if not rest.startswith("//") and not (scheme == "serial" and rest.startswith("/")):
        raise ValueError(f"{text!r}: write {scheme}:// before the {_WHAT[scheme]}, e.g. {_EXAMPLE[scheme]!r}")
    return parser(text)


_WHAT = {"tcp": "address", "usb": "ids", "serial": "port", "cups": "queue name"}
_EXAMPLE = {
    "tcp": "tcp://192.168.1.50:9100",
    "usb": "usb://04b8:0202",
    "serial": "serial:///dev/ttyS0?baudrate=9600",
    "cups": "cups://Caja1",
}


def _split(text: str):
    try:
        return urlsplit(text)
    except ValueError as e:  # e.g. an unbalanced [ in an IPv6 address
        raise ValueError(f"{text!r}: {e}") from None


def _no_extras(text: str, parts, *, path: bool = True, query: bool = True) -> None:
    if path and parts.path not in ("", "/"):
        raise ValueError(f"{text!r}: unexpected {parts.path!r} after the {_WHAT[parts.scheme.lower()]}")
    if query and parts.query:
        raise ValueError(f"{text!r}: {parts.scheme.lower()}: printers take no options (?{parts.query})")
    if parts.fragment:
        raise ValueError(f"{text!r}: unexpected #{parts.fragment}")


def _parse_tcp(text: str) -> PrinterSpec:
    parts = _split(text)
    _no_extras(text, parts, query=False)
    confirm = True
    if parts.query:
        key, sep, value = parts.query.partition("=")
        if key != "confirm" or not sep or value.lower() not in ("yes", "no", "1", "0", "true", "false"):
            raise ValueError(f"{text!r}: the only option of a network printer is ?confirm=no "
                             "(for a printer that does not answer DLE EOT status requests)")
        confirm = value.lower() in ("yes", "1", "true")
    if "@" in parts.netloc:
        raise ValueError(f"{text!r}: a network printer takes no user name or password")
    host = parts.hostname
    if not host:
        raise ValueError(f"{text!r}: the printer's address is missing, e.g. {_EXAMPLE['tcp']!r}")
    try:
        port = parts.port
    except ValueError:
        shown = parts.netloc.rpartition(":")[2]
        raise ValueError(f"{text!r}: the port {shown!r} is not a number from 1 to 65535") from None
    if port is None:
        if parts.netloc.endswith(":"):
            raise ValueError(f"{text!r}: the port is missing after ':' (printers listen on 9100)")
        port = DEFAULT_TCP_PORT
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: the port {port} is not a number from 1 to 65535")
    if ":" not in host and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?", host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or IP address")
    options = {"port": port} if confirm else {"port": port, "confirm": False}
    return PrinterSpec("tcp", host, options)


def _parse_usb(text: str) -> PrinterSpec:
    parts = _split(text)
    _no_extras(text, parts, query=False)
    m = re.fullmatch(r"(?:0x)?([0-9A-Fa-f]{1,4}):(?:0x)?([0-9A-Fa-f]{1,4})", parts.netloc)
    if not m:
        raise ValueError(
            f"{text!r}: a USB printer is given by its vendor and product ids in hex, "
            f"e.g. 'usb://04b8:0202' (lsusb shows them as ID 04b8:0202)"
        )
    vid, pid = int(m.group(1), 16), int(m.group(2), 16)
    options = {"vendor_id": vid, "product_id": pid, "in_ep": USB_IN_EP, "out_ep": USB_OUT_EP}
    for key, value in _query(text, parts, ("in_ep", "out_ep")):
        try:
            ep = int(value, 0)
        except ValueError:
            ep = -1
        if not 0 <= ep <= 0xFF:
            raise ValueError(f"{text!r}: {key}={value!r} is not a USB endpoint number (e.g. 0x82)")
        options[key] = ep
    return PrinterSpec("usb", f"{vid:04x}:{pid:04x}", options)


_SERIAL_DEFAULTS = {
    "baudrate": 9600,
    "bytesize": 8,
    "parity": "N",
    "stopbits": 1,
    "rtscts": False,
    "dsrdtr": False,
    "xonxoff": False,
}


def _parse_serial(text: str) -> PrinterSpec:
    parts = _split(text)
    if parts.fragment:
        raise ValueError(f"{text!r}: unexpected #{parts.fragment}")
    # serial:///dev/ttyS0 (a path) or serial://COM3 (a Windows port name)
    port = unquote(parts.netloc + parts.path if parts.netloc else parts.path)
    if not port or port == "/":
        raise ValueError(f"{text!r}: the serial port is missing, e.g. {_EXAMPLE['serial']!r}")
    options = dict(_SERIAL_DEFAULTS)
    for key, value in _query(text, parts, tuple(_SERIAL_DEFAULTS)):
        v = value.strip()
        if key == "baudrate":
            if not v.isdigit() or not 50 <= int(v) <= 4_000_000:
                raise ValueError(f"{text!r}: baudrate={value!r} is not a speed such as 9600, 19200, 38400 or 115200")
            options[key] = int(v)
        elif key == "bytesize":
            if v not in ("5", "6", "7", "8"):
                raise ValueError(f"{text!r}: bytesize={value!r} must be 5, 6, 7 or 8")
            options[key] = int(v)
        elif key == "parity":
            if v.upper() not in ("N", "E", "O", "M", "S"):
                raise ValueError(f"{text!r}: parity={value!r} must be N (none), E (even), O (odd), M or S")
            options[key] = v.upper()
        elif key == "stopbits":
            if v not in ("1", "1.5", "2"):
                raise ValueError(f"{text!r}: stopbits={value!r} must be 1, 1.5 or 2")
            options[key] = 1.5 if v == "1.5" else int(v)
        else:
            flag = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}.get(v.lower())
            if flag is None:
                raise ValueError(f"{text!r}: {key}={value!r} must be true or false")
            options[key] = flag
    return PrinterSpec("serial", port, options)


def _parse_cups(text: str) -> PrinterSpec:
    parts = _split(text)
    _no_extras(text, parts)
    queue = unquote(parts.netloc)
    if not queue:
        raise ValueError(f"{text!r}: the CUPS queue name is missing, e.g. 'cups://Caja1' (lpstat -p lists them)")
    if len(queue) > 127 or re.search(r"[\s/\\#'\"@]", queue) or not queue.isprintable():
        raise ValueError(f"{text!r}: {queue!r} is not a CUPS queue name (no spaces, /, \\, #, @ or quotes)")
    return PrinterSpec("cups", queue, {})


def _query(text: str, parts, allowed: tuple[str, ...]):
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"{text!r}: cannot read the options {parts.query!r}; write them as ?name=value&name=value") from None
    seen = set()
    for key, value in pairs:
        key = key.strip().lower()
        if key not in allowed:
            raise ValueError(f"{text!r}: unknown option {key!r}; {parts.scheme.lower()}: printers take {', '.join(allowed)}")
        if key in seen:
            raise ValueError(f"{text!r}: the option {key!r} is given twice")
        seen.add(key)
        yield key, value


def _parse_file(text: str, rest: str) -> PrinterSpec:
    if rest.startswith("//"):  # file:///dev/usb/lp0, the URL form
        parts = _split(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text!r}: a file printer is on this computer; write file:/path or file:///path")
        path = unquote(parts.path)
    else:
        path = rest
    if not path.strip():
        raise ValueError(f"{text!r}: a path is missing after 'file:', e.g. 'file:/dev/usb/lp0' or 'file:data/prints/'")
    if "\0" in path:
        raise ValueError(f"{text!r}: the path contains a NUL character")
    try:
        found = os.stat(path)
    except (OSError, ValueError):  # nothing there (yet), or not ours to look at
        found = None
    if path.endswith(("/", os.sep)) or (found is not None and stat.S_ISDIR(found.st_mode)):
        return PrinterSpec("folder", path, {})
    if found is not None or path.startswith("/dev/"):
        return PrinterSpec("file", path, {})
    return PrinterSpec("folder", path, {})


# -- sending -----------------------------------------------------------------------------


def send(spec: PrinterSpec, data: bytes, *, name: str, preview: bytes | None = None, timeout: float = 5.0) -> None:
    """Deliver one job: one attempt, never retried here (a retry can print twice).

    ``name`` names the job: the file name stem in a folder (made safe for a file name,
    reversibly) and the job title in CUPS.  ``preview`` (a PNG) is kept only by folder
    printers.  Returns when the printer has taken every byte; raises PrinterError when it
    refuses, cannot be reached, drops the connection, or has not taken the job within
    ``timeout`` seconds (connecting included).  After a PrinterError part of the slip may
    have printed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"the print data must be bytes, not {type(data).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError("a print job needs a non-empty name")
    if not timeout > 0:
        raise ValueError(f"timeout must be more than 0 seconds, not {timeout!r}")
    data = bytes(data)
    kind = spec.kind
    if kind == "none":
        return
    if kind == "tcp":
        return _send_tcp(spec, data, timeout, name)
    if kind == "folder":
        return _send_folder(spec, data, preview, name)
    if kind == "file":
        return _send_file(spec, data, timeout, name)
    if kind == "cups":
        return _send_cups(spec, data, timeout, name)
    if kind == "usb":
        return _send_usb(spec, data, timeout, name)
    if kind == "serial":
        return _send_serial(spec, data, timeout, name)
    raise ValueError(f"unknown printer kind {kind!r}; one of {', '.join(KINDS)}")


def _error(spec: PrinterSpec, problem: str, job: str | None = None) -> PrinterError:
    where = f" (job {job})" if job else ""
    return PrinterError(f"printer {spec}{where}: {problem}", printer=str(spec))


def _secs(t: float) -> str:
    return f"{t:g} s" if t >= 1 or t == 0 else f"{t:.2g} s"


_NOT_TAKING = "it may be out of paper, have its cover open, be jammed or be busy with another job"


# -- tcp ---------------------------------------------------------------------------------


def _connect(spec: PrinterSpec, deadline: float, timeout: float, job: str | None) -> socket.socket:
    host, port = spec.target, spec.options.get("port", DEFAULT_TCP_PORT)
    try:
        return socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.001))
    except TimeoutError:
        raise _error(spec, f"could not connect within {_secs(timeout)}: is it switched on and on the network, and is the address right?", job) from None
    except ConnectionRefusedError:
        raise _error(spec, f"refused the connection: nothing accepts print jobs on port {port} at that address", job) from None
    except socket.gaierror as e:
        raise _error(spec, f"the host name {host!r} cannot be resolved ({e.strerror})", job) from None
    except OSError as e:
        raise _error(spec, f"cannot be reached: {e.strerror or e}", job) from None


def _send_tcp(spec: PrinterSpec, data: bytes, timeout: float, job: str) -> None:
    if spec.options.get("confirm", True):
        return _send_tcp_confirmed(spec, data, timeout, job)
    deadline = time.monotonic() + timeout
    sock = _connect(spec, deadline, timeout, job)
    late = _error(spec, f"did not accept the data within {_secs(timeout)}; {_NOT_TAKING}", job)
    dropped = _error(spec, "closed the connection in the middle of the job; part of the slip may have printed", job)
    with sock:
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(data)  # since Python 3.5 the timeout bounds the whole sendall
            sock.shutdown(socket.SHUT_WR)  # "that was all": most printers then close
        except TimeoutError:
            raise late from None
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise dropped from None
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                raise dropped from None
            raise _error(spec, f"failed while sending: {e.strerror or e}", job) from None
        # Every byte is in this computer's send buffer, not necessarily in the printer:
        # wait until the printer has acknowledged all of it (or has closed after reading).
        grace_end: float | None = None
        peer_closed = False
        while True:
            now = time.monotonic()
            unsent = _unacknowledged(sock)
            if _socket_error(sock):  # a reset empties the queue: never mistake it for success
                raise dropped
            if now >= deadline:
                if unsent:
                    raise late
                return
            if not unsent:
                if peer_closed:
                    return
                if grace_end is None:
                    grace_end = min(now + CLOSE_GRACE, deadline)
                if now >= grace_end:
                    return  # all acknowledged; this printer keeps connections open
                wait = grace_end - now
            else:
                wait = min(deadline - now, 0.02)  # poll the queue while the printer reads
            if peer_closed:
                # It closed its side but may still be reading ours: watch the queue drain.
                select.select([], [], [sock], wait)
                continue
            sock.settimeout(max(wait, 0.001))
            try:
                chunk = sock.recv(4096)  # a printer may send status bytes: ignored
            except TimeoutError:
                continue
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                raise dropped from None
            except OSError as e:
                raise _error(spec, f"failed after sending: {e.strerror or e}", job) from None
            if not chunk:
                peer_closed = True
                if unsent is None:
                    return  # cannot tell what is left; the printer read until our end


def _send_tcp_confirmed(spec: PrinterSpec, data: bytes, timeout: float, job: str) -> None:
    """Send the job followed by DLE EOT 1 and wait for the printer's status byte.

    TCP acknowledgements only say the bytes reached the printer's network buffer: a
    printer whose firmware hangs, or that waits for paper, still acknowledges a small
    slip. The status byte comes from the printer itself, after it read the job, so it
    is the proof a slip was taken. Printers that do not answer DLE EOT are configured
    with ?confirm=no and get the acknowledgement check alone."""
    deadline = time.monotonic() + timeout
    sock = _connect(spec, deadline, timeout, job)
    silent = _error(spec, f"took no status request within {_secs(timeout)}; {_NOT_TAKING} "
                          "(a printer that never answers DLE EOT needs ?confirm=no)", job)
    dropped = _error(spec, "closed the connection in the middle of the job; part of the slip may have printed", job)
    with sock:
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(data + DLE_EOT + b"\x01")
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(64)
                if not chunk:
                    raise _error(spec, "closed the connection without answering the status request; "
                                       "if this printer does not answer DLE EOT, add ?confirm=no", job)
                if any(_is_status_byte(b) for b in chunk):
                    break
        except TimeoutError:
            raise silent from None
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise dropped from None
        except OSError as e:
            raise _error(spec, f"failed while sending: {e.strerror or e}", job) from None
        _close_after_status(sock, deadline)


def _close_after_status(sock: socket.socket, deadline: float) -> None:
    """Half-close and read what the printer still sends before closing.

    A raster image may hold the bytes of a status request, and a printer answers those
    too. Closing a socket with unread answers in it sends a reset, and a reset throws
    away whatever the printer had not read yet: the tail of the slip. So say "that was
    all" and read until the printer closes, or for a short grace if it keeps the line."""
    end = min(time.monotonic() + CLOSE_GRACE, deadline)
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(4096):
                return
    except OSError:  # the printer already answered for the job; nothing more to learn
        return


def _unacknowledged(sock: socket.socket) -> int | None:
    """Bytes sent but not yet acknowledged by the printer (Linux SIOCOUTQ), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import fcntl
        import termios

        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return struct.unpack("i", raw)[0]
    except (ImportError, OSError, AttributeError):
        return None


def _socket_error(sock: socket.socket) -> int:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as e:
        return e.errno or -1


# -- folder and file ---------------------------------------------------------------------


def file_stem(name: str) -> str:
    """A job name as a safe file name stem: letters, digits and ``-_.~`` kept, anything
    else %-escaped (so two names never share a file), no leading dot; long names are
    shortened with a hash."""
    stem = quote(name, safe="-_.~")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if len(stem) > 180:
        stem = stem[:160] + "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return stem


def _send_folder(spec: PrinterSpec, data: bytes, preview: bytes | None, job: str) -> None:
    folder = Path(spec.target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _error(spec, f"cannot create the folder: {e.strerror or e}", job) from None
    stem = file_stem(job)
    try:
        # The .png first: whoever sees a .bin appear finds its preview already there.
        if preview is not None:
            _write_atomically(folder / f"{stem}.png", preview)
        _write_atomically(folder / f"{stem}.bin", data)
    except OSError as e:
        raise _error(spec, f"cannot write the job into the folder: {e.strerror or e}", job) from None


def _write_atomically(path: Path, content: bytes) -> None:
    """Write to a hidden temporary file in the same folder, flush it to disk, then rename
    it over ``path``: readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); harmless where unsupported
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _send_file(spec: PrinterSpec, data: bytes, timeout: float, job: str) -> None:
    path = spec.target
    is_device = path.startswith("/dev/")
    flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not is_device:  # never create a plain file in /dev when a printer is unplugged
        flags |= os.O_CREAT
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        if is_device:
            raise _error(spec, "the device does not exist: is the printer plugged in and switched on?", job) from None
        raise _error(spec, "the folder it is in does not exist", job) from None
    except PermissionError:
        raise _error(spec, "permission denied: the agent's user may not write to it (on Linux, add it to the lp group)", job) from None
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENODEV):
            raise _error(spec, "nothing is connected behind it (printer unplugged or switched off, or no reader on the pipe)", job) from None
        raise _error(spec, f"cannot be opened: {e.strerror or e}", job) from None
    try:
        view = memoryview(data)
        poller = select.poll() if hasattr(select, "poll") else None
        if poller is not None:
            poller.register(fd, select.POLLOUT)
        while view:
            try:
                n = os.write(fd, view[:65536])
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or poller is None:
                    raise _error(spec, f"did not accept the data within {_secs(timeout)}; {_NOT_TAKING}", job) from None
                poller.poll(max(1, int(left * 1000)))
                continue
            except OSError as e:
                raise _error(spec, f"failed while writing: {e.strerror or e}", job) from None
            view = view[n:]
            if view and time.monotonic() > deadline:
                raise _error(spec, f"did not accept the data within {_secs(timeout)}; {_NOT_TAKING}", job)
    finally:
        os.close(fd)


# -- cups --------------------------------------------------------------------------------


def _send_cups(spec: PrinterSpec, data: bytes, timeout: float, job: str) -> None:
    lp = shutil.which("lp")
    if lp is None:
        raise _error(spec, "the lp command is not installed: printing to CUPS needs the CUPS client (apt-get install cups-client)", job)
    args = [lp, "-d", spec.target, "-o", "raw", "-t", job]
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=(os.name == "posix"),  # so a timeout can stop all of it
        )
    except OSError as e:
        raise _error(spec, f"cannot run {lp}: {e.strerror or e}", job) from None
    try:
        _, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise _error(spec, f"lp did not finish within {_secs(timeout)}: is the CUPS service (cupsd) running?", job) from None
    except BaseException:
        _kill(proc)
        raise
    if proc.returncode != 0:
        message = " ".join(err.decode("utf-8", "replace").split())[:300] or "no message"
        raise _error(spec, f"lp failed (exit status {proc.returncode}): {message}", job)


def _kill(proc: subprocess.Popen) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, 9)
        else:
            proc.kill()
    except OSError:
        pass
    try:
        proc.communicate(timeout=2)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        pass


# -- usb and serial (optional packages, imported only when used) --------------------------


def _need_pyusb(spec: PrinterSpec, job: str | None):
    try:
        import usb.core  # noqa: F401  (pyusb)
    except ImportError:
        raise _error(
            spec,
            "usb printing needs the pyusb package (pip install pyusb) and the libusb library "
            "(apt-get install libusb-1.0-0); or use the printer's device file: file:/dev/usb/lp0",
            job,
        ) from None
    return usb


def _need_pyserial(spec: PrinterSpec, job: str | None):
    try:
        import serial  # pyserial
    except ImportError:
        raise _error(spec, "serial printing needs the pyserial package (pip install pyserial)", job) from None
    return serial


def _open_usb(spec: PrinterSpec, timeout: float, job: str | None):
    usb = _need_pyusb(spec, job)
    from escpos.exceptions import DeviceNotFoundError
    from escpos.printer import Usb

    o = spec.options
    printer = Usb(o["vendor_id"], o["product_id"], timeout=max(1, int(timeout * 1000)),
                  in_ep=o.get("in_ep", USB_IN_EP), out_ep=o.get("out_ep", USB_OUT_EP), profile="default")
    try:
        printer.open()
    except DeviceNotFoundError:
        raise _error(
            spec,
            "not found: is it plugged in and switched on? (on Linux the agent's user also needs "
            "permission for the device, given by a udev rule)",
            job,
        ) from None
    except usb.core.USBError as e:
        raise _error(spec, f"cannot be opened: {e}", job) from None
    return usb, printer


def _close_quietly(obj) -> None:
    try:
        obj.close()
    except Exception:
        pass


def _send_usb(spec: PrinterSpec, data: bytes, timeout: float, job: str) -> None:
    usb, printer = _open_usb(spec, timeout, job)
    try:
        printer._raw(data)
    except usb.core.USBTimeoutError:
        raise _error(spec, f"did not accept the data within {_secs(timeout)}; {_NOT_TAKING}", job) from None
    except usb.core.USBError as e:
        raise _error(spec, f"USB error while sending: {e}", job) from None
    finally:
        _close_quietly(printer)


def _open_serial(spec: PrinterSpec, timeout: float, job: str | None):
    serial = _need_pyserial(spec, job)
    o = spec.options
    try:
        port = serial.Serial(
            port=spec.target,
            baudrate=o.get("baudrate", 9600),
            bytesize=o.get("bytesize", 8),
            parity=o.get("parity", "N"),
            stopbits=o.get("stopbits", 1),
            rtscts=o.get("rtscts", False),
            dsrdtr=o.get("dsrdtr", False),
            xonxoff=o.get("xonxoff", False),
            timeout=timeout,
            write_timeout=timeout,
        )
    except (serial.SerialException, ValueError, OSError) as e:
        raise _error(spec, f"cannot open the serial port: {e}", job) from None
    return serial, port


def _send_serial(spec: PrinterSpec, data: bytes, timeout: float, job: str) -> None:
    deadline = time.monotonic() + timeout
    serial, port = _open_serial(spec, timeout, job)
    late = _error(spec, f"did not accept the data within {_secs(timeout)}; {_NOT_TAKING}", job)
    delivered = False
    try:
        port.write(data)  # write_timeout bounds the whole write
        # then wait, within the deadline, until the port has sent it all to the printer
        while _out_waiting(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        if _out_waiting(port):
            raise late
        delivered = True
    except serial.SerialTimeoutException:
        raise late from None
    except (serial.SerialException, OSError) as e:
        raise _error(spec, f"failed while writing: {e}", job) from None
    finally:
        if not delivered:  # drop what is left, or closing the port waits for it to drain
            try:
                port.reset_output_buffer()
            except Exception:
                pass
        _close_quietly(port)


def _out_waiting(port) -> int:
    try:
        return port.out_waiting
    except Exception:  # not every platform can tell: count it as sent
        return 0


# -- status ------------------------------------------------------------------------------

DLE_EOT = b"\x10\x04"


def _is_status_byte(b: int) -> bool:
    """DLE EOT answers have bits 0 and 7 clear and bits 1 and 4 set."""
    return b & 0x93 == 0x12


def status(spec: PrinterSpec, *, timeout: float = 2.0) -> str | None:
    """Ask the printer how it is (ESC/POS real-time status, DLE EOT 1, 4 and, when it is
    offline, 2 and 3) and answer in a short sentence: "online", "online, paper low",
    "cover open", "paper out", "offline", or "error: ...".

    None when the kind cannot answer (file, folder, cups, none).  PrinterError when the
    printer cannot be reached or does not answer within ``timeout`` seconds in all."""
    if spec.kind in ("file", "folder", "cups", "none"):
        return None
    if not timeout > 0:
        raise ValueError(f"timeout must be more than 0 seconds, not {timeout!r}")
    deadline = time.monotonic() + timeout
    channel = _StatusChannel(spec, deadline, timeout)
    try:
        first = channel.ask(1)
        if first is None:
            raise _error(
                spec,
                f"did not answer the status request within {_secs(timeout)} (busy with a job, "
                "a print server that passes no answers back, or not an ESC/POS printer)",
            )
        paper = channel.ask(4)
        paper_out = paper is not None and paper & 0x60 == 0x60
        paper_low = paper is not None and paper & 0x0C == 0x0C
        if first & 0x08:  # offline
            cause = channel.ask(2)
            if cause is not None and cause & 0x04:
                return "cover open"
            if paper_out or (cause is not None and cause & 0x20):
                return "paper out"
            if cause is not None and cause & 0x08:
                return "offline: paper is being fed with the feed button"
            if cause is not None and cause & 0x40:
                error = channel.ask(3)
                if error is not None and error & 0x08:
                    return "error: the paper cutter is jammed"
                if error is not None and error & 0x20:
                    return "error: switch the printer off and on again"
                if error is not None and error & 0x40:
                    return "error: print head too hot; it resumes by itself"
                return "error"
            return "offline"
        if paper_out:
            return "paper out"
        if paper_low:
            return "online, paper low"
        return "online"
    finally:
        channel.close()


class _StatusChannel:
    """Sends DLE EOT n and reads the one-byte answer, within a shared deadline."""

    def __init__(self, spec: PrinterSpec, deadline: float, timeout: float) -> None:
        self.spec, self.deadline, self.timeout = spec, deadline, timeout
        self.sock = self.port = self.usb = self.printer = None
        if spec.kind == "tcp":
            self.sock = _connect(spec, deadline, timeout, None)
        elif spec.kind == "serial":
            self.serial, self.port = _open_serial(spec, timeout, None)
        elif spec.kind == "usb":
            self.usb, self.printer = _open_usb(spec, timeout, None)
        else:
            raise ValueError(f"unknown printer kind {spec.kind!r}")

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def ask(self, n: int) -> int | None:
        """The printer's answer to DLE EOT n, or None if none came in time."""
        if self._left() <= 0:
            return None
        request = DLE_EOT + bytes([n])
        try:
            if self.sock is not None:
                return self._ask_tcp(request)
            if self.port is not None:
                return self._ask_serial(request)
            return self._ask_usb(request)
        except PrinterError:
            raise
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            raise _error(self.spec, "closed the connection while being asked for its status") from None
        except OSError as e:
            raise _error(self.spec, f"status request failed: {e.strerror or e}") from None

    def _ask_tcp(self, request: bytes) -> int | None:
        self.sock.settimeout(max(self._left(), 0.001))
        try:
            self.sock.sendall(request)
        except TimeoutError:
            return None
        while self._left() > 0:
            self.sock.settimeout(max(self._left(), 0.001))
            try:
                chunk = self.sock.recv(64)
            except TimeoutError:
                return None
            if not chunk:
                raise _error(self.spec, "closed the connection without answering the status request")
            for b in chunk:
                if _is_status_byte(b):
                    return b
        return None

    def _ask_serial(self, request: bytes) -> int | None:
        try:
            self.port.write_timeout = max(self._left(), 0.001)
            self.port.write(request)
            while self._left() > 0:
                self.port.timeout = max(self._left(), 0.001)
                chunk = self.port.read(1)
                if chunk and _is_status_byte(chunk[0]):
                    return chunk[0]
        except self.serial.SerialTimeoutException:
            return None
        except self.serial.SerialException as e:
            raise _error(self.spec, f"status request failed: {e}") from None
        return None

    def _ask_usb(self, request: bytes) -> int | None:
        try:
            self.printer.timeout = max(1, int(self._left() * 1000))
            self.printer._raw(request)
            while self._left() > 0:
                self.printer.timeout = max(1, int(self._left() * 1000))
                for b in bytes(self.printer._read()):
                    if _is_status_byte(b):
                        return b
        except self.usb.core.USBTimeoutError:
            return None
        except self.usb.core.USBError as e:
            raise _error(self.spec, f"status request failed: {e}") from None
        return None

    def close(self) -> None:
        for obj in (self.sock, self.port, self.printer):
            if obj is not None:
                _close_quietly(obj)
