"""Reads back what a job of ESC/POS bytes prints: for tests, strict about what it knows.

``read_escpos(data)`` walks the bytes command by command, as a printer would, and returns
the printed text (decoded with the code page selected by ``ESC t n``), the text lines with
their alignment and emphasis, the QR codes sent with ``GS ( k`` (their stored data, module
size and error correction), the raster images of ``GS v 0`` as PIL images, the cuts and
the code pages selected.  An unknown command raises ValueError, so a test notices bytes
that a printer would not understand either.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageOps

# ESC t n -> Python codec, for the tables a slip may select (Epson numbering).
CODE_PAGES = {0: "cp437", 2: "cp850", 3: "cp860", 4: "cp863", 5: "cp865", 16: "cp1252", 19: "cp858"}
EC_LEVELS = {48: "L", 49: "M", 50: "Q", 51: "H"}


@dataclass
class Line:
    text: str
    align: str  # "left" | "center" | "right", as in effect when the line started
    bold: bool


@dataclass
class QRCommand:
    data: bytes | None = None  # function 80: the stored symbol data
    size: int | None = None  # function 67: module size in dots
    ec: str | None = None  # function 69: L M Q H
    model: int | None = None  # function 65: 1 or 2 (50 = micro)
    printed: bool = False  # function 81 followed


@dataclass
class Reading:
    text: str = ""
    lines: list[Line] = field(default_factory=list)
    codepages: list[int] = field(default_factory=list)  # n of every ESC t n, in order
    qrs: list[QRCommand] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)  # GS v 0 rasters, black on white, mode "1"
    cuts: list[int] = field(default_factory=list)  # m of every GS V m
    status_requests: list[int] = field(default_factory=list)  # n of every DLE EOT n
    events: list[str] = field(default_factory=list)  # "init", "text", "qr", "image", "feed", "cut" in order

    @property
    def qr_data(self) -> bytes | None:
        """The data of the (last) QR symbol stored with GS ( k function 80."""
        stored = [q.data for q in self.qrs if q.data is not None]
        return stored[-1] if stored else None


def read_escpos(data: bytes) -> Reading:
    r = Reading()
    i, n = 0, len(data)
    codepage = 0
    align, bold = "left", False
    line_text: list[str] = []
    line_style: tuple[str, bool] | None = None
    qr = QRCommand()

    def need(count: int) -> bytes:
        if i + count > n:
            raise ValueError(f"command at byte {start} is cut short")
        return data[i : i + count]

    def end_line() -> None:
        nonlocal line_style
        style = line_style or (align, bold)
        r.lines.append(Line("".join(line_text), *style))
        line_text.clear()
        line_style = None

    while i < n:
        start = i
        b = data[i]
        i += 1
        if b == 0x0A:
            end_line()
            r.text += "\n"
            continue
        if b == 0x0D:
            continue
        if b >= 0x20:
            if codepage not in CODE_PAGES:
                raise ValueError(f"text at byte {start} in an unknown code page {codepage}")
            ch = bytes([b]).decode(CODE_PAGES[codepage])
            if line_style is None:
                line_style = (align, bold)
            line_text.append(ch)
            r.text += ch
            if not r.events or r.events[-1] != "text":
                r.events.append("text")
            continue
        if b == 0x1B:  # ESC
            cmd = need(1)[0]
            i += 1
            if cmd == ord("@"):
                codepage, align, bold = 0, "left", False
                r.events.append("init")
            elif cmd == ord("t"):
                codepage = need(1)[0]
                i += 1
                r.codepages.append(codepage)
            elif cmd == ord("E"):
                bold = bool(need(1)[0] & 1)
                i += 1
            elif cmd == ord("a"):
                align = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}[need(1)[0]]
                i += 1
            elif cmd == ord("d"):
                feed = need(1)[0]
                i += 1
                r.events.append("feed")
                for _ in range(feed):
                    end_line()
                    r.text += "\n"
            elif cmd in b"!-GM3J{r":
                i += 1  # one-byte parameter, no effect on what is read here
            elif cmd == ord("2"):
                pass
            else:
                raise ValueError(f"unknown command ESC {chr(cmd)!r} (0x{cmd:02x}) at byte {start}")
            continue
        if b == 0x1D:  # GS
            cmd = need(1)[0]
            i += 1
            if cmd == ord("("):
                fn_group = need(1)[0]
                size = int.from_bytes(need(3)[1:3], "little")
                i += 3
                body = need(size)
                i += size
                if fn_group == ord("k"):
                    cn, fn = body[0], body[1]
                    if cn != ord("1"):
                        raise ValueError(f"GS ( k for a 2D code other than QR (cn={cn}) at byte {start}")
                    if fn == 65:
                        qr.model = body[2] - 48
                    elif fn == 67:
                        qr.size = body[2]
                    elif fn == 69:
                        qr.ec = EC_LEVELS[body[2]]
                    elif fn == 80:
                        if body[2] != 48:
                            raise ValueError(f"GS ( k function 80 with m={body[2]} at byte {start}")
                        qr.data = bytes(body[3:])
                    elif fn == 81:
                        qr.printed = True
                        r.qrs.append(qr)
                        r.events.append("qr")
                        qr = QRCommand(size=qr.size, ec=qr.ec, model=qr.model)
                    else:
                        raise ValueError(f"GS ( k function {fn} at byte {start}")
                elif fn_group != ord("L"):
                    raise ValueError(f"unknown command GS ( {chr(fn_group)!r} at byte {start}")
            elif cmd == ord("v"):
                head = need(6)
                i += 6
                if head[0] != ord("0"):
                    raise ValueError(f"GS v {chr(head[0])!r} at byte {start}")
                width_bytes = int.from_bytes(head[2:4], "little")
                height = int.from_bytes(head[4:6], "little")
                raster = need(width_bytes * height)
                i += width_bytes * height
                # In the raster a 1 bit is a black dot; in PIL's mode "1" a 1 bit is white.
                img = Image.frombytes("1", (width_bytes * 8, height), bytes(raster))
                r.images.append(ImageOps.invert(img.convert("L")).convert("1"))
                r.events.append("image")
            elif cmd == ord("V"):
                m = need(1)[0]
                i += 1
                if m in (65, 66, 97, 98, 103, 104):
                    i += 1  # feed amount
                r.cuts.append(m)
                r.events.append("cut")
            elif cmd in b"!Bb|":
                i += 1
            else:
                raise ValueError(f"unknown command GS {chr(cmd)!r} (0x{cmd:02x}) at byte {start}")
            continue
        if b == 0x10:  # DLE
            cmd = need(2)
            i += 2
            if cmd[0] != 0x04:
                raise ValueError(f"unknown real-time command DLE 0x{cmd[0]:02x} at byte {start}")
            r.status_requests.append(cmd[1])
            continue
        raise ValueError(f"unexpected control byte 0x{b:02x} at byte {start}")
    if line_text:
        end_line()
    return r
