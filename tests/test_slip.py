"""The self-invoicing slip: ESC/POS bytes read back command by command, QR codes decoded
with a real decoder (zxing-cpp), the PNG preview decoded too."""
from __future__ import annotations

import io
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal

import pytest
import qrcode
import qrcode.constants
import zxingcpp
from PIL import Image

from escpos_reader import read_escpos

import printer.slip as slip_module
from printer.slip import CODEPAGE_SLOT, Layout, Slip, money, printable, qr_module_size, render_escpos, render_png, sample_slip

URL = "https://facturacion.example.com/b391655ac2242d85ddd36d37b482259b/dsfhjkajslfd45646412/A-000123"  # 93 chars

LAYOUTS = [
    pytest.param(Layout(paper_mm=80, native_qr=True), id="80mm-native"),
    pytest.param(Layout(paper_mm=58, native_qr=True), id="58mm-native"),
    pytest.param(Layout(paper_mm=80, native_qr=False), id="80mm-image"),
    pytest.param(Layout(paper_mm=58, native_qr=False), id="58mm-image"),
]


def make_slip(**changes) -> Slip:
    base = Slip(
        company_name="ESCUELA KEMPER URGATE",
        branch_name="Centro",
        ticket_number="A-000123",
        sold_at=datetime(2026, 11, 20, 23, 30, 5),
        total=Decimal("1234.56"),
        deadline=date(2026, 11, 27),
        url=URL,
    )
    return replace(base, **changes)


def decode(img: Image.Image) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(img.convert("L"))]


def qr_image(data: bytes, ec: str, size: int) -> Image.Image:
    """Draw a QR the way the printer draws it from GS ( k: its data, level and dot size."""
    levels = {"L": qrcode.constants.ERROR_CORRECT_L, "M": qrcode.constants.ERROR_CORRECT_M,
              "Q": qrcode.constants.ERROR_CORRECT_Q, "H": qrcode.constants.ERROR_CORRECT_H}
    code = qrcode.QRCode(error_correction=levels[ec], box_size=size, border=4)
    code.add_data(data, optimize=0)
    code.make(fit=True)
    return code.make_image().get_image()


# -- the QR code ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_printed_qr_opens_the_tickets_url(layout):
    slip = make_slip()
    reading = read_escpos(render_escpos(slip, layout))
    if layout.native_qr:
        assert reading.images == []
        assert len(reading.qrs) == 1
        qr = reading.qrs[0]
        assert qr.printed and qr.model == 2
        assert qr.data == slip.url.encode("ascii")  # the raw data, exactly
        assert qr.ec == "M"
        assert qr.size == qr_module_size(slip.url, layout) == 6
        img = qr_image(qr.data, qr.ec, qr.size)
        assert img.width <= layout.width_dots  # with its quiet zone, inside the paper
        assert decode(img) == [slip.url]
    else:
        assert reading.qrs == []
        assert len(reading.images) == 1
        raster = reading.images[0]
        assert raster.width <= layout.width_dots
        assert decode(raster) == [slip.url]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_qr_sits_in_the_middle_of_the_paper(layout):
    data = render_escpos(make_slip(), layout)
    if layout.native_qr:
        qr_at = data.index(b"\x1d(k")
        last_align = max(data.rfind(b"\x1ba" + bytes([n]), 0, qr_at) for n in (0, 1, 2))
        assert data[last_align : last_align + 3] == b"\x1ba\x01"  # ESC a 1: centred
    else:
        raster = read_escpos(data).images[0].convert("L")
        assert raster.width == layout.width_dots  # the whole line, the code in its middle
        left, top, right, bottom = Image.eval(raster, lambda v: 255 - v).getbbox()
        assert abs(left - (raster.width - right)) <= 1
        quiet = 4 * qr_module_size(URL, layout)
        assert top == quiet and raster.height - bottom == quiet  # the quiet zone is in the image


@pytest.mark.parametrize("ec", ["L", "Q", "H"])
def test_the_error_correction_level_is_the_layouts(ec):
    layout = Layout(paper_mm=58, qr_error_correction=ec)
    qr = read_escpos(render_escpos(make_slip(), layout)).qrs[0]
    assert qr.ec == ec
    assert decode(qr_image(qr.data, ec, qr.size)) == [URL]
    image = read_escpos(render_escpos(make_slip(), replace(layout, native_qr=False))).images[0]
    assert decode(image) == [URL]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_long_url_gets_smaller_modules_and_still_fits(layout):
    url = "https://facturacion.example.com/portal/" + "x" * 600 + "?firma=0123456789abcdef"
    slip = make_slip(url=url)
    size = qr_module_size(url, layout)
    assert size < 6
    reading = read_escpos(render_escpos(slip, layout))
    if layout.native_qr:
        qr = reading.qrs[0]
        assert qr.size == size
        img = qr_image(qr.data, qr.ec, qr.size)
        assert img.width <= layout.width_dots
        assert decode(img) == [url]
    else:
        assert reading.images[0].width <= layout.width_dots
        assert decode(reading.images[0]) == [url]
    assert decode(Image.open(io.BytesIO(render_png(slip, layout)))) == [url]


def test_a_url_too_long_for_any_qr_is_refused_clearly():
    slip = make_slip(url="https://x.example.com/" + "a" * 3000)
    with pytest.raises(ValueError, match="too long for a QR code"):
        render_escpos(slip, Layout(paper_mm=58))
    with pytest.raises(ValueError, match="too long for a QR code"):
        render_png(slip, Layout())


def test_the_default_module_size_keeps_a_90_character_url_inside_58_mm():
    assert Layout().qr_size == 6
    layout = Layout(paper_mm=58)
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4, box_size=6)
    code.add_data(URL.encode(), optimize=0)
    code.make(fit=True)
    assert code.version == 6
    assert (code.modules_count + 8) * 6 <= layout.width_dots  # 294 <= 384


# -- the text -----------------------------------------------------------------------------


def lines_of(layout, **changes) -> list[str]:
    return [line.text for line in read_escpos(render_escpos(make_slip(**changes), layout)).lines]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_slip_reads_top_to_bottom(layout):
    reading = read_escpos(render_escpos(make_slip(), layout))
    texts = [line.text for line in reading.lines]
    assert texts[:7] == [
        "ESCUELA KEMPER URGATE",
        "Centro",
        "",
        "Ticket: A-000123",
        "Fecha: 20/11/2026 23:30",
        "Total: $1,234.56",
        "",
    ]
    company = reading.lines[0]
    assert company.bold and company.align == "center"
    assert reading.lines[1].align == "center" and not reading.lines[1].bold
    assert all(len(t) <= layout.columns for t in texts)
    # the URL, hard-wrapped to the column width, then the QR, then the invitation
    url_lines = [t for t in texts if t and t in URL]
    assert "".join(url_lines) == URL
    assert all(len(t) == layout.columns for t in url_lines[:-1])
    assert "Escanee para facturar" in texts
    events = reading.events
    assert events.index("qr" if layout.native_qr else "image") < len(events) - 2
    assert reading.text.index(URL[-10:]) < reading.text.index("Escanee para facturar")


def test_the_deadline_line():
    assert "Facture en línea hasta 27/11/2026" in lines_of(Layout(paper_mm=80))
    # 33 characters do not fit 32 columns: the date goes on the next line, whole
    lines = lines_of(Layout(paper_mm=58))
    at = lines.index("Facture en línea hasta")
    assert lines[at + 1] == "27/11/2026"


def test_the_date_is_the_wall_time_given():
    assert "Fecha: 05/01/2027 07:04" in lines_of(Layout(), sold_at=datetime(2027, 1, 5, 7, 4, 59))


@pytest.mark.parametrize(
    "amount, shown",
    [
        (Decimal("1234.56"), "$1,234.56"),
        (Decimal("1234.5"), "$1,234.50"),
        (Decimal("0.005"), "$0.01"),  # half up, as the tickets are rounded
        (Decimal("1234567.891"), "$1,234,567.89"),
        (Decimal("999.999"), "$1,000.00"),
        (Decimal("0"), "$0.00"),
        (Decimal("-15"), "-$15.00"),
        (7, "$7.00"),
    ],
)
def test_money(amount, shown):
    assert money(amount) == shown


def test_the_total_line():
    assert "Total: $1,234,567.89" in lines_of(Layout(), total=Decimal("1234567.891"))


def test_a_float_total_is_refused():
    with pytest.raises(TypeError, match="Decimal"):
        make_slip(total=1234.56)


def test_spanish_accents_print_in_pc850():
    slip = make_slip(
        company_name="FACTURACIÓN Y PAPELERÍA ÑANDÚ",
        branch_name="Sucursal Jardín Juárez, Güemes",
        ticket_number="¿Año?¡Sí!",
    )
    for layout in (Layout(), Layout(paper_mm=58, native_qr=False)):
        data = render_escpos(slip, layout)
        # ESC @ then ESC t 2 (PC850), once, before any text
        assert data.startswith(b"\x1b@\x1bt" + bytes([CODEPAGE_SLOT]))
        assert CODEPAGE_SLOT == 2
        assert data.count(b"\x1bt") == 1
        # the words, byte for byte in CP850
        assert b"l\xa1nea" in data  # í = 0xA1
        assert b"FACTURACI\xe0N" in data  # Ó = 0xE0 (not in PC437)
        assert b"PAPELER\xd6A" in data  # Í = 0xD6 (not in PC437)
        assert b"\xa5AND\xe9" in data  # Ñ = 0xA5, Ú = 0xE9
        assert b"Jard\xa1n Ju\xa0rez, G\x81emes" in data  # á = 0xA0, ü = 0x81
        assert b"\xa8A\xa4o?\xadS\xa1!" in data  # ¿ = 0xA8, ñ = 0xA4, ¡ = 0xAD
        for word in ("línea", "FACTURACIÓN", "PAPELERÍA", "ÑANDÚ", "Jardín Juárez, Güemes", "¿Año?¡Sí!"):
            assert word.encode("cp850") in data
        # no replacement character anywhere but where the text has one
        assert data.count(b"?") == 1
        text = read_escpos(data).text
        assert "FACTURACIÓN Y PAPELERÍA ÑANDÚ" in text and "Sucursal Jardín Juárez, Güemes" in text


def test_the_magic_encoder_of_python_escpos_is_pinned_to_pc850():
    # Left to itself python-escpos picks PC437, then PC857 (ESC t 13) for Ó: not here.
    data = render_escpos(make_slip(company_name="ÓÁÉÍÚ óáéíú ñÑüÜ ¿¡"), Layout())
    reading = read_escpos(data)
    assert reading.codepages == [2]
    assert "ÓÁÉÍÚ óáéíú ñÑüÜ ¿¡" in reading.text


def test_characters_without_a_pc850_glyph_get_a_close_spelling():
    assert printable("“Hola” – 5 € … ā ł\u00a0x") == '"Hola" - 5 EUR ... a ? x'
    lines = lines_of(Layout(), company_name="La “Esquina” — Café")
    assert lines[0] == 'La "Esquina" - Café'


def test_control_characters_from_a_ticket_cannot_become_printer_commands():
    data = render_escpos(make_slip(ticket_number="A\x1b@\x1dV\x001\n2\x10\x04\x01"), Layout())
    reading = read_escpos(data)  # would raise on a stray command
    assert "Ticket: A@V1 2" in [line.text for line in reading.lines]
    assert reading.cuts == [1] and reading.status_requests == []
    assert data.count(b"\x1b@") == 1


def test_a_long_company_name_wraps_on_words():
    lines = lines_of(Layout(paper_mm=58), company_name="DISTRIBUIDORA DE ABARROTES Y SEMILLAS DEL VALLE DE OAXACA")
    assert lines[:2] == ["DISTRIBUIDORA DE ABARROTES Y", "SEMILLAS DEL VALLE DE OAXACA"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_job_ends_with_a_feed_and_a_partial_cut(layout):
    data = render_escpos(make_slip(), layout)
    assert data.endswith(b"\x1bd\x06\x1dV\x01")  # ESC d 6, GS V 1
    reading = read_escpos(data)
    assert reading.events[0] == "init"
    assert reading.events[-2:] == ["feed", "cut"]
    assert reading.cuts == [1]


def test_layout_derives_width_and_columns():
    assert (Layout().width_dots, Layout().columns) == (576, 48)
    assert (Layout(paper_mm=58).width_dots, Layout(paper_mm=58).columns) == (384, 32)
    assert Layout(qr_error_correction="q").qr_error_correction == "Q"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"paper_mm": 76}, "paper_mm must be 58 or 80"),
        ({"qr_size": 0}, "qr_size"),
        ({"qr_size": 17}, "qr_size"),
        ({"qr_error_correction": "X"}, "L, M, Q, H"),
    ],
)
def test_bad_layouts_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        Layout(**changes)


# -- the PNG preview ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_preview_has_the_printers_width_and_the_same_qr(layout):
    png = render_png(make_slip(), layout)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    assert img.width == layout.width_dots
    assert img.height > img.width / 2
    assert decode(img) == [URL]
    # black on white
    grey = img.convert("L")
    assert grey.getpixel((0, 0)) == 255 and grey.getextrema() == (0, 255)


def test_the_preview_without_system_fonts_still_shows_accents(monkeypatch):
    monkeypatch.setattr(slip_module, "_painter", slip_module._Painter(font_names=()))
    slip = make_slip(company_name="PAPELERÍA LA ÑORA")
    for layout in (Layout(), Layout(paper_mm=58)):
        img = Image.open(io.BytesIO(render_png(slip, layout)))
        assert img.width == layout.width_dots
        assert decode(img) == [URL]


def test_the_preview_draws_the_text_where_the_printer_does():
    # Font A cells are 12 dots wide: the centred company name starts where the printer's does
    layout = Layout(paper_mm=58)
    img = Image.open(io.BytesIO(render_png(make_slip(), layout))).convert("L")
    company = img.crop((0, 8, img.width, 8 + 34))  # the first line, below the top margin
    left, _, right, _ = Image.eval(company, lambda v: 255 - v).getbbox()
    width = 12 * len("ESCUELA KEMPER URGATE")
    assert abs(left - (layout.width_dots - width) // 2) <= 3
    assert abs((right - left) - width) <= 14
    ticket = img.crop((0, 8 + 3 * 34, img.width, 8 + 4 * 34))  # "Ticket: ..." starts at the left edge
    assert Image.eval(ticket, lambda v: 255 - v).getbbox()[0] <= 3


def test_the_sample_slip_has_accents_and_renders():
    sample = sample_slip()
    text = sample.company_name + sample.branch_name
    assert any(c in text for c in "áéíóúñÁÉÍÓÚÑ")
    assert 70 <= len(sample.url) <= 120
    for layout in (Layout(), Layout(paper_mm=58, native_qr=False)):
        data = render_escpos(sample, layout)
        assert b"?" not in data
        assert decode(Image.open(io.BytesIO(render_png(sample, layout)))) == [sample.url]
