"""The self-invoicing slip: what a customer gets for each ticket, as ESC/POS bytes and as a PNG.

Plain values in, bytes out: nothing here knows of Flask, of the database or of the
agent's configuration.  The ESC/POS bytes and the PNG preview are drawn from the same
list of lines, so the preview shows what the printer prints, line for line.

Code page: the slip always prints in PC850 (Multilingual Latin-1), selected with
``ESC t 2`` right after ``ESC @``, and every text byte is encoded with CP850.  PC850
holds all of Spanish, both cases: á é í ó ú ü ñ Á É Í Ó Ú Ü Ñ ¿ ¡.  python-escpos'
"magic" encoding is pinned to it (``charcode("CP850")``) because, left to itself, it
picks PC437 (``ESC t 0``) for the lower case letters and, for Á Í Ó Ú (missing from
PC437), jumps to whatever table sorts first as a *string* of its slot number, which
is PC857 (Turkish, ``ESC t 13``): a table many printers lack.  Slot 2 is PC850 on
Epson printers and on the common clones alike.  Characters PC850 lacks are replaced
by a close ASCII spelling (“ ” -> ", € -> EUR, ā -> a) before printing; control
characters are dropped, so no value of a ticket can smuggle a printer command in.
"""
from __future__ import annotations

import copy
import io
import textwrap
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import qrcode
import qrcode.constants
from qrcode.exceptions import DataOverflowError

CODEPAGE = "CP850"  # python-escpos / Python codec name
CODEPAGE_SLOT = 2  # n of ESC t n on Epson and compatible printers: PC850 Multilingual
PROFILE = "default"  # python-escpos profile: Epson code page slots, cut and GS ( k support

QUIET_ZONE = 4  # modules of white around a QR code, as the QR standard asks

_WIDTH_DOTS = {80: 576, 58: 384}  # printable width at 203 dpi: 72 mm and 48 mm
_COLUMNS = {80: 48, 58: 32}  # Font A is 12 dots wide
_EC_LEVELS = "LMQH"

# Characters PC850 lacks, spelled with ones it has.
_SPELLINGS = {
    "\u2018": "'", "\u2019": "'", "\u201a": ",", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2032": "'", "\u2033": '"', "\u2039": "<", "\u203a": ">",
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...", "\u2022": "*", "\u00a0": " ", "\u2007": " ", "\u2009": " ", "\u202f": " ",
    "\u20ac": "EUR", "\u2122": "TM", "\u2116": "No.",
}


@dataclass(frozen=True)
class Slip:
    """What one slip says.  ``sold_at`` is the branch's local wall time, printed as is."""

    company_name: str  # e.g. "ESCUELA KEMPER URGATE"
    branch_name: str  # e.g. "Centro"
    ticket_number: str
    sold_at: datetime  # branch local wall time
    total: Decimal
    deadline: date  # last day the customer may self-invoice
    url: str  # the portal URL for this ticket (already built by the caller)

    def __post_init__(self) -> None:
        if isinstance(self.total, float) or not isinstance(self.total, (Decimal, int)):
            raise TypeError(f"Slip.total must be a Decimal, not {type(self.total).__name__}")
        if not Decimal(self.total).is_finite():
            raise ValueError(f"Slip.total must be a finite amount, not {self.total}")
        if not isinstance(self.sold_at, datetime):
            raise TypeError(f"Slip.sold_at must be a datetime, not {type(self.sold_at).__name__}")
        if not isinstance(self.deadline, date):
            raise TypeError(f"Slip.deadline must be a date, not {type(self.deadline).__name__}")
        if not self.url or not self.url.strip():
            raise ValueError("Slip.url must not be empty: it is what the QR code opens")


@dataclass(frozen=True)
class Layout:
    """How the printer prints.  ``qr_size`` is the largest module size used: it is
    lowered, when needed, so that the QR and its quiet zone fit the paper."""

    paper_mm: int = 80  # 80 or 58
    native_qr: bool = True  # GS ( k native QR; False -> QR printed as a raster image (GS v 0)
    # 6 dots = 0.75 mm per module at 203 dpi.  A ~90-character URL at level M is a
    # version 6 code (41 modules): with the 4-module quiet zone on each side it takes
    # (41 + 8) x 6 = 294 dots = 37 mm, inside a 58 mm roll's 384 printable dots with
    # room to spare, and 0.75 mm modules stay sharp on thermal paper and scan at
    # arm's length with any phone.  Up to version 8 (152 characters at M) still fits
    # 58 mm at this size; longer URLs are printed with smaller modules automatically.
    qr_size: int = 6  # module size in dots (1..16)
    qr_error_correction: str = "M"  # L M Q H

    def __post_init__(self) -> None:
        if self.paper_mm not in _WIDTH_DOTS:
            raise ValueError(f"paper_mm must be 58 or 80, not {self.paper_mm!r}")
        if not isinstance(self.qr_size, int) or not 1 <= self.qr_size <= 16:
            raise ValueError(f"qr_size must be a whole number of dots from 1 to 16, not {self.qr_size!r}")
        ec = str(self.qr_error_correction).upper()
        if len(ec) != 1 or ec not in _EC_LEVELS:
            raise ValueError(f"qr_error_correction must be one of L, M, Q, H, not {self.qr_error_correction!r}")
        object.__setattr__(self, "qr_error_correction", ec)

    @property
    def width_dots(self) -> int:
        """Printable width in dots: 576 on 80 mm paper, 384 on 58 mm (203 dpi)."""
        return _WIDTH_DOTS[self.paper_mm]

    @property
    def columns(self) -> int:
        """Characters per line in the printer's Font A (12 x 24 dots): 48 or 32."""
        return _COLUMNS[self.paper_mm]


# -- text --------------------------------------------------------------------------------


def printable(text: str) -> str:
    """``text`` as the printer can print it in PC850: one line, no control characters,
    characters PC850 lacks replaced by a close spelling (``?`` only as a last resort)."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", str(text)):
        if ch in "\t\r\n\v\f":
            out.append(" ")
            continue
        if unicodedata.category(ch)[0] == "C":  # control, format, private use, unassigned
            continue
        if ch in _SPELLINGS:
            out.append(_SPELLINGS[ch])
            continue
        if _in_codepage(ch):
            out.append(ch)
            continue
        plain = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(plain if plain and all(_in_codepage(c) for c in plain) else "?")
    return "".join(out)


def _in_codepage(ch: str) -> bool:
    try:
        ch.encode(CODEPAGE)
    except UnicodeEncodeError:
        return False
    return True


def money(amount: Decimal | int) -> str:
    """MXN as printed on the slip: ``$1,234.56`` (half-up to the cent, no float)."""
    try:
        cents = Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise ValueError(f"not an amount: {amount!r}") from None
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents):,.2f}"


@dataclass(frozen=True)
class _Line:
    text: str
    align: str = "left"  # "left" | "center"
    bold: bool = False


@dataclass(frozen=True)
class _QR:
    data: str


def _wrap(text: str, columns: int, align: str = "left", bold: bool = False) -> list[_Line]:
    text = printable(text).strip()
    if not text:
        return [_Line("", align, bold)]
    lines = textwrap.wrap(text, columns, break_long_words=True, break_on_hyphens=False)
    return [_Line(line, align, bold) for line in lines]


def _chunks(text: str, columns: int, align: str) -> list[_Line]:
    """Hard-wrapped at the column width: for the URL, which has no spaces."""
    text = printable(text).replace(" ", "")
    return [_Line(text[i : i + columns], align) for i in range(0, len(text), columns)]


def _content(slip: Slip, layout: Layout) -> list[_Line | _QR]:
    cols = layout.columns
    items: list[_Line | _QR] = []
    items += _wrap(slip.company_name, cols, "center", bold=True)
    items += _wrap(slip.branch_name, cols, "center")
    items.append(_Line(""))
    items += _wrap(f"Ticket: {slip.ticket_number}", cols)
    items += _wrap(f"Fecha: {slip.sold_at:%d/%m/%Y %H:%M}", cols)
    items += _wrap(f"Total: {money(slip.total)}", cols, bold=True)
    items.append(_Line(""))
    items += _wrap(f"Facture en línea hasta {slip.deadline:%d/%m/%Y}", cols, "center")
    items += _chunks(slip.url, cols, "center")
    items.append(_QR(slip.url))
    items += _wrap("Escanee para facturar", cols, "center")
    return items


# -- QR ----------------------------------------------------------------------------------


def _qr_code(data: str, ec: str, box_size: int) -> qrcode.QRCode:
    levels = {
        "L": qrcode.constants.ERROR_CORRECT_L,
        "M": qrcode.constants.ERROR_CORRECT_M,
        "Q": qrcode.constants.ERROR_CORRECT_Q,
        "H": qrcode.constants.ERROR_CORRECT_H,
    }
    code = qrcode.QRCode(version=None, error_correction=levels[ec], box_size=box_size, border=QUIET_ZONE)
    # optimize=0: one byte-mode segment, as printers' own encoders do; never a smaller
    # version than the printer will choose, so the fit computed below holds for GS ( k too.
    code.add_data(data.encode("utf-8"), optimize=0)
    try:
        code.make(fit=True)
    except (DataOverflowError, ValueError):  # qrcode says "Invalid version (was 41...)"
        raise ValueError(
            f"the URL ({len(data)} characters) is too long for a QR code at error correction {ec}"
        ) from None
    return code


def qr_module_size(url: str, layout: Layout) -> int:
    """The module size (dots) the slip's QR is printed with: ``layout.qr_size``, or less
    when the code and its quiet zone would not fit the printable width.  ValueError when
    the URL is too long for any QR code (over 2,300 characters at level M)."""
    code = _qr_code(url, layout.qr_error_correction, 1)
    modules = code.modules_count + 2 * QUIET_ZONE
    size = min(layout.qr_size, layout.width_dots // modules)
    if size < 1:
        raise ValueError(
            f"the URL ({len(url)} characters) makes a QR code of {code.modules_count} modules, "
            f"too big for {layout.paper_mm} mm paper ({layout.width_dots} dots)"
        )
    return size


def _qr_image(url: str, layout: Layout, size: int):
    """The QR with its quiet zone, black on white, ``size`` dots per module (mode "1")."""
    img = _qr_code(url, layout.qr_error_correction, size).make_image(fill_color="black", back_color="white")
    return img.get_image().convert("1")


# -- ESC/POS -----------------------------------------------------------------------------

_profiles: dict[int, object] = {}


def _profile(layout: Layout):
    """The python-escpos "default" profile with this paper's width filled in (a copy:
    the library shares profile data between printers)."""
    prof = _profiles.get(layout.paper_mm)
    if prof is None:
        from escpos.capabilities import Profile, get_profile_class

        data = copy.deepcopy(get_profile_class(PROFILE).profile_data)
        data["media"] = {"dpi": 203, "width": {"mm": layout.width_dots / 8, "pixels": layout.width_dots}}
        data["fonts"]["0"]["columns"] = layout.columns
        prof = Profile(columns=layout.columns, features=data["features"])
        prof.profile_data = data
        _profiles[layout.paper_mm] = prof
    return prof


def render_escpos(slip: Slip, layout: Layout = Layout()) -> bytes:
    """The slip as ESC/POS bytes: ESC @, ESC t 2 (PC850), the text, the QR (GS ( k, or a
    GS v 0 raster image as wide as the paper), a feed and a partial cut (GS V 1)."""
    from escpos.constants import QR_ECLEVEL_H, QR_ECLEVEL_L, QR_ECLEVEL_M, QR_ECLEVEL_Q
    from escpos.printer import Dummy

    ec = {"L": QR_ECLEVEL_L, "M": QR_ECLEVEL_M, "Q": QR_ECLEVEL_Q, "H": QR_ECLEVEL_H}[layout.qr_error_correction]
    size = qr_module_size(slip.url, layout)
    p = Dummy(profile=_profile(layout))
    p.hw("INIT")  # ESC @: clears any style or code page a previous job left behind
    p.charcode(CODEPAGE)  # ESC t 2, and every text byte from here on in CP850
    align, bold = "left", False
    for item in _content(slip, layout):
        if isinstance(item, _QR):
            if align != "center":
                p.set(align="center")
                align = "center"
            if layout.native_qr:
                # The printer draws no quiet zone: a blank line above and below (30 dots,
                # over 4 modules) keeps text away from the code.
                p.ln()
                p.qr(item.data, ec=ec, size=size, native=True)
                p.ln()
            else:
                # Full paper width with the code in the middle: centred on every printer,
                # whether or not it applies ESC a to raster images.  The quiet zone is in it.
                code = _qr_image(item.data, layout, size)
                page = _qr_strip(code, layout.width_dots)
                p.image(page, impl="bitImageRaster", center=False)
            continue
        if item.align != align:
            p.set(align=item.align)
            align = item.align
        if item.bold != bold:
            p.set(bold=item.bold)
            bold = item.bold
        p.text(item.text + "\n")
    if align != "left":
        p.set(align="left")
    if bold:
        p.set(bold=False)
    p.cut(mode="PART")  # ESC d 6 (feed the slip past the cutter), GS V 1
    return p.output


def _qr_strip(code, width: int):
    from PIL import Image

    strip = Image.new("1", (width, code.height), 1)
    strip.paste(code, ((width - code.width) // 2, 0))
    return strip


# -- PNG preview -------------------------------------------------------------------------

_LINE_DOTS = 34  # ESC 2 default line spacing: 1/6 inch at 203 dpi
_CELL = 12  # Font A: 12 x 24 dots per character, so 48 or 32 characters to the line
_MARGIN = 8  # white above the first line, as the paper leaves the cutter

# Monospaced TrueType fonts with the Spanish letters, looked up in the system's font
# folders (Linux, Windows, macOS).  Pillow's own scalable default font (Aileron) has no
# accented letters at all (it draws á as a box), so it is never used.  Without any of
# these, the preview uses Pillow's built-in bitmap font (Latin-1, 6 x 11), drawn twice
# as large: a 12 x 22 cell, as blocky as the printer's own font and always available.
_FONTS = ("DejaVuSansMono.ttf", "LiberationMono-Regular.ttf", "consola.ttf", "cour.ttf", "Menlo.ttc", "Courier New.ttf")


class _Painter:
    """Draws one line of text in a 12-dot-per-character cell, like Font A."""

    def __init__(self, font_names=_FONTS) -> None:
        from PIL import ImageFont

        self.font = None
        for name in font_names:
            try:
                font = ImageFont.truetype(name, 20)
            except OSError:
                continue
            notdef = bytes(font.getmask("\uffff"))
            if any(bytes(font.getmask(ch)) == notdef for ch in "áéíóúñÑü¿¡ÁÉÍÓÚ"):
                continue  # a font without the Spanish letters
            # the largest size whose advance fits the 12-dot cell
            self.font = ImageFont.truetype(name, 20 * _CELL / font.getlength("M") - 0.05)
            break
        if self.font is None:
            self.bitmap = ImageFont.load_default_imagefont()

    def draw(self, img, x: int, y: int, text: str, bold: bool) -> None:
        from PIL import Image, ImageChops, ImageDraw

        if self.font is not None:
            draw = ImageDraw.Draw(img)
            ascent, descent = self.font.getmetrics()
            top = y + (_LINE_DOTS - ascent - descent) // 2
            for dx in (0, 1) if bold else (0,):
                draw.text((x + dx, top), text, font=self.font, fill=0)
            return
        text = text.encode("latin-1", "replace").decode("latin-1")
        small = Image.new("L", (6 * len(text) + 1, 11), 255)
        ImageDraw.Draw(small).text((0, 0), text, font=self.bitmap, fill=0)
        big = small.resize((small.width * 2, 22), Image.Resampling.NEAREST)
        top = y + (_LINE_DOTS - 22) // 2
        for dx in (0, 1) if bold else (0,):
            box = (x + dx, top, x + dx + big.width, top + big.height)
            box = (box[0], box[1], min(box[2], img.width), box[3])
            region = img.crop(box)
            img.paste(ImageChops.darker(region, big.crop((0, 0, box[2] - box[0], big.height))), box[:2])


_painter: _Painter | None = None


def render_png(slip: Slip, layout: Layout = Layout()) -> bytes:
    """A PNG of the slip as the printer prints it: as wide as the printable area in dots
    (576 or 384 px), black on white, the same lines, the same QR code, 12 dots per
    character as in the printer's Font A."""
    global _painter
    from PIL import Image

    if _painter is None:
        _painter = _Painter()
    items = _content(slip, layout)
    qr_img = _qr_image(slip.url, layout, qr_module_size(slip.url, layout)).convert("L")
    width = layout.width_dots
    n_lines = sum(1 for i in items if isinstance(i, _Line))
    img = Image.new("L", (width, 2 * _MARGIN + n_lines * _LINE_DOTS + qr_img.height), 255)
    y = _MARGIN
    for item in items:
        if isinstance(item, _QR):
            img.paste(qr_img, ((width - qr_img.width) // 2, y))
            y += qr_img.height
            continue
        if item.text:
            x = 0 if item.align == "left" else (width - _CELL * len(item.text)) // 2
            _painter.draw(img, x, y, item.text, item.bold)
        y += _LINE_DOTS
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


# -- sample ------------------------------------------------------------------------------


def sample_slip() -> Slip:
    """A realistic slip for ``ticket-agent print-test``: accents, ñ, a four-digit total
    and a portal URL of the usual length (about 90 characters)."""
    return Slip(
        company_name="PAPELERÍA Y REGALOS LA ÑORA",
        branch_name="Sucursal Jardín Juárez",
        ticket_number="A-0012345",
        sold_at=datetime(2026, 11, 20, 13, 45),
        total=Decimal("1234.56"),
        deadline=date(2026, 11, 27),
        url="https://facturacion.example.com/b391655ac2242d85ddd36d37b482259b/centro/A-0012345",
    )
