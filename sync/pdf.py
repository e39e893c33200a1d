"""A readable PDF of a stamped CFDI 4.0: the factura global or a customer's own invoice.

``render_pdf(xml)`` lays out, in Spanish, what a person checks on an invoice: emisor,
receptor, InformacionGlobal, payment, one table row per Concepto (the ticket number is the
NoIdentificacion), the tax summary and totals, the timbre (UUID, dates, the last characters
of both seals) and SAT's verification QR. A CFDI stamped by the local sandbox
(``sync.sandbox.is_sandbox_stamp``) gets a red "SANDBOX — SIN VALIDEZ FISCAL" banner on
every page.

Fonts: a Unicode TrueType font is looked for on this computer (``find_unicode_font``:
DejaVu Sans in the usual places, then ``fc-match``); without one, fpdf's core Helvetica is
used, which can only draw windows-1252 text: Spanish is fine, anything else is transliterated
or shown as "?".

Needs fpdf2 and qrcode (Pillow comes with fpdf2). No Flask, no database.
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import quote

import qrcode
from fpdf import FPDF

from sync.sandbox import is_sandbox_stamp

CFDI = "{http://www.sat.gob.mx/cfd/4}"
TFD = "{http://www.sat.gob.mx/TimbreFiscalDigital}"
VERIFY_BASE = "https://verificacfdi.facturaelectronica.sat.gob.mx/default.aspx"

SANDBOX_BANNER = "SANDBOX — SIN VALIDEZ FISCAL"
SANDBOX_NOTE = (
    "Timbrado localmente por el sandbox de pos-ticket-agent: no lo timbró un PAC y no es un CFDI "
    "válido ante el SAT."
)

# --- SAT catalogs (the entries a store's invoices use; an unknown key is shown bare) ------

FORMA_PAGO = {
    "01": "Efectivo", "02": "Cheque nominativo", "03": "Transferencia electrónica de fondos",
    "04": "Tarjeta de crédito", "05": "Monedero electrónico", "06": "Dinero electrónico",
    "08": "Vales de despensa", "12": "Dación en pago", "13": "Pago por subrogación",
    "14": "Pago por consignación", "15": "Condonación", "17": "Compensación", "23": "Novación",
    "24": "Confusión", "25": "Remisión de deuda", "26": "Prescripción o caducidad",
    "27": "A satisfacción del acreedor", "28": "Tarjeta de débito", "29": "Tarjeta de servicios",
    "30": "Aplicación de anticipos", "31": "Intermediario pagos", "99": "Por definir",
}
METODO_PAGO = {"PUE": "Pago en una sola exhibición", "PPD": "Pago en parcialidades o diferido"}
REGIMEN_FISCAL = {
    "601": "General de Ley Personas Morales", "603": "Personas Morales con Fines no Lucrativos",
    "605": "Sueldos y Salarios e Ingresos Asimilados a Salarios", "606": "Arrendamiento",
    "607": "Régimen de Enajenación o Adquisición de Bienes", "608": "Demás ingresos",
    "610": "Residentes en el Extranjero sin Establecimiento Permanente en México",
    "611": "Ingresos por Dividendos (socios y accionistas)",
    "612": "Personas Físicas con Actividades Empresariales y Profesionales",
    "614": "Ingresos por intereses", "615": "Régimen de los ingresos por obtención de premios",
    "616": "Sin obligaciones fiscales",
    "620": "Sociedades Cooperativas de Producción que optan por diferir sus ingresos",
    "621": "Incorporación Fiscal", "622": "Actividades Agrícolas, Ganaderas, Silvícolas y Pesqueras",
    "623": "Opcional para Grupos de Sociedades", "624": "Coordinados",
    "625": "Régimen de las Actividades Empresariales con ingresos a través de Plataformas Tecnológicas",
    "626": "Régimen Simplificado de Confianza",
}
USO_CFDI = {
    "G01": "Adquisición de mercancías", "G02": "Devoluciones, descuentos o bonificaciones",
    "G03": "Gastos en general", "I01": "Construcciones",
    "I02": "Mobiliario y equipo de oficina por inversiones", "I03": "Equipo de transporte",
    "I04": "Equipo de computo y accesorios", "I05": "Dados, troqueles, moldes, matrices y herramental",
    "I06": "Comunicaciones telefónicas", "I07": "Comunicaciones satelitales",
    "I08": "Otra maquinaria y equipo",
    "D01": "Honorarios médicos, dentales y gastos hospitalarios",
    "D02": "Gastos médicos por incapacidad o discapacidad", "D03": "Gastos funerales",
    "D04": "Donativos", "D05": "Intereses reales efectivamente pagados por créditos hipotecarios (casa habitación)",
    "D06": "Aportaciones voluntarias al SAR", "D07": "Primas por seguros de gastos médicos",
    "D08": "Gastos de transportación escolar obligatoria",
    "D09": "Depósitos en cuentas para el ahorro, primas que tengan como base planes de pensiones",
    "D10": "Pagos por servicios educativos (colegiaturas)", "S01": "Sin efectos fiscales",
    "CP01": "Pagos", "CN01": "Nómina",
}
TIPO_COMPROBANTE = {"I": "Ingreso", "E": "Egreso", "T": "Traslado", "N": "Nómina", "P": "Pago"}
EXPORTACION = {
    "01": "No aplica", "02": "Definitiva con clave A1", "03": "Temporal",
    "04": "Definitiva con clave distinta a A1 o cuando no existe enajenación en términos del CFF",
}
TIPO_RELACION = {
    "01": "Nota de crédito de los documentos relacionados", "02": "Nota de débito de los documentos relacionados",
    "03": "Devolución de mercancía sobre facturas o traslados previos", "04": "Sustitución de los CFDI previos",
    "05": "Traslados de mercancías facturados previamente", "06": "Factura generada por los traslados previos",
    "07": "CFDI por aplicación de anticipo",
}
PERIODICIDAD = {"01": "Diario", "02": "Semanal", "03": "Quincenal", "04": "Mensual", "05": "Bimestral"}
MESES = {
    "01": "Enero", "02": "Febrero", "03": "Marzo", "04": "Abril", "05": "Mayo", "06": "Junio",
    "07": "Julio", "08": "Agosto", "09": "Septiembre", "10": "Octubre", "11": "Noviembre",
    "12": "Diciembre", "13": "Enero-Febrero", "14": "Marzo-Abril", "15": "Mayo-Junio",
    "16": "Julio-Agosto", "17": "Septiembre-Octubre", "18": "Noviembre-Diciembre",
}
IMPUESTO = {"001": "ISR", "002": "IVA", "003": "IEPS"}


def named(catalog: dict[str, str], key: str | None) -> str:
    """'01 Efectivo'; the bare key when the catalog does not know it; '' for None."""
    if not key:
        return ""
    name = catalog.get(key)
    return f"{key} {name}" if name else key


# --- the CFDI, read ---------------------------------------------------------------------


@dataclass
class Tax:
    impuesto: str
    tipo_factor: str | None
    tasa: str | None
    base: str | None
    importe: str | None
    retencion: bool = False

    @property
    def label(self) -> str:
        """'IVA 16%', 'IEPS 8%', 'IVA Exento', 'IEPS cuota 0.5900', 'Ret. ISR 10%', 'Ret. IVA'."""
        name = IMPUESTO.get(self.impuesto, self.impuesto)
        if self.retencion:
            name = "Ret. " + name
        if self.tipo_factor == "Exento":
            return f"{name} Exento"
        if self.tasa is None:
            return name
        if self.tipo_factor == "Cuota":
            return f"{name} cuota {_number(self.tasa)}"
        try:
            percent = (Decimal(self.tasa) * 100).normalize()
        except InvalidOperation:
            return f"{name} {self.tasa}"
        return f"{name} {percent:f}%"


@dataclass
class Concepto:
    no_identificacion: str
    clave_prod_serv: str
    clave_unidad: str
    unidad: str
    descripcion: str
    cantidad: str
    valor_unitario: str
    descuento: str | None
    importe: str
    taxes: list[Tax]


@dataclass
class Cfdi:
    attrs: dict[str, str]
    emisor: dict[str, str]
    receptor: dict[str, str]
    informacion_global: dict[str, str] | None
    relacionados: list[tuple[str, list[str]]]
    conceptos: list[Concepto]
    traslados: list[Tax]
    retenciones: list[Tax]
    impuestos: dict[str, str]
    tfd: dict[str, str] = field(default_factory=dict)

    @property
    def is_global(self) -> bool:
        return self.informacion_global is not None

    @property
    def serie_folio(self) -> str:
        return "-".join(v for v in (self.attrs.get("Serie"), self.attrs.get("Folio")) if v)


def _taxes(parent: ET.Element | None, retencion: bool) -> list[Tax]:
    if parent is None:
        return []
    tag = "Retencion" if retencion else "Traslado"
    return [
        Tax(t.get("Impuesto", ""), t.get("TipoFactor"), t.get("TasaOCuota"), t.get("Base"), t.get("Importe"), retencion)
        for t in parent.iterfind(f"{CFDI}{tag}")
    ]


def parse_cfdi(xml: bytes) -> Cfdi:
    """Read a stamped CFDI 4.0; ValueError if it is not XML, not a CFDI 4.0 or not stamped."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"no es XML bien formado: {exc}") from None
    if root.tag != f"{CFDI}Comprobante" or root.get("Version") != "4.0":
        raise ValueError("no es un CFDI 4.0 (cfdi:Comprobante, Version 4.0)")
    emisor = root.find(f"{CFDI}Emisor")
    receptor = root.find(f"{CFDI}Receptor")
    if emisor is None or receptor is None:
        raise ValueError("al CFDI le falta cfdi:Emisor o cfdi:Receptor")
    tfd = root.find(f"{CFDI}Complemento/{TFD}TimbreFiscalDigital")
    if tfd is None or not tfd.get("UUID"):
        raise ValueError("el CFDI no está timbrado (no tiene TimbreFiscalDigital con UUID)")
    info = root.find(f"{CFDI}InformacionGlobal")
    conceptos = []
    for c in root.iterfind(f"{CFDI}Conceptos/{CFDI}Concepto"):
        imp = c.find(f"{CFDI}Impuestos")
        taxes = []
        if imp is not None:
            taxes = _taxes(imp.find(f"{CFDI}Traslados"), False) + _taxes(imp.find(f"{CFDI}Retenciones"), True)
        conceptos.append(Concepto(
            no_identificacion=c.get("NoIdentificacion", ""), clave_prod_serv=c.get("ClaveProdServ", ""),
            clave_unidad=c.get("ClaveUnidad", ""), unidad=c.get("Unidad", ""), descripcion=c.get("Descripcion", ""),
            cantidad=c.get("Cantidad", ""), valor_unitario=c.get("ValorUnitario", ""), descuento=c.get("Descuento"),
            importe=c.get("Importe", ""), taxes=taxes,
        ))
    impuestos = root.find(f"{CFDI}Impuestos")
    relacionados = [
        (r.get("TipoRelacion", ""), [u.get("UUID", "") for u in r.iterfind(f"{CFDI}CfdiRelacionado")])
        for r in root.iterfind(f"{CFDI}CfdiRelacionados")
    ]
    return Cfdi(
        attrs=dict(root.attrib), emisor=dict(emisor.attrib), receptor=dict(receptor.attrib),
        informacion_global=None if info is None else dict(info.attrib), relacionados=relacionados,
        conceptos=conceptos,
        traslados=_taxes(None if impuestos is None else impuestos.find(f"{CFDI}Traslados"), False),
        retenciones=_taxes(None if impuestos is None else impuestos.find(f"{CFDI}Retenciones"), True),
        impuestos={} if impuestos is None else dict(impuestos.attrib), tfd=dict(tfd.attrib),
    )


# --- verification URL -------------------------------------------------------------------


def verification_url(xml: bytes) -> str:
    """SAT's verification URL, the content of the invoice's QR (Anexo 20, CFDI 4.0):
    ``...default.aspx?id=UUID&re=RFC_EMISOR&rr=RFC_RECEPTOR&tt=TOTAL&fe=LAST8_OF_SELLO``.

    tt: Anexo 20 (3.3 and 4.0) asks for the Total "máximo a 25 posiciones (18 para los
    enteros, 1 para el punto, 6 para los decimales)" omitting non-significant zeros; the
    fixed 17-character zero-padded form was CFDI 3.2's. So tt is the Total as a plain decimal
    without leading zeros or trailing decimal zeros, keeping one decimal digit as SAT's own
    example does (Total="980.18" -> 980.18, "1000.00" -> 1000.0, "844.50" -> 844.5). That is
    the Total as written for most totals, and the same value either way.
    re/rr: RFCs as written, percent-encoding only what cannot stand in a query (an RFC may
    hold "&" or "Ñ"). fe: the last 8 characters of the Comprobante's Sello, raw, as SAT
    writes them (base64 characters).
    """
    return _verification_url(parse_cfdi(xml))


def _tt(total: str) -> str:
    try:
        value = Decimal(total.strip())
    except InvalidOperation:
        raise ValueError(f"Total inválido: {total!r}") from None
    text = f"{value.quantize(Decimal('0.000001')):f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _verification_url(cfdi: Cfdi) -> str:
    return (
        f"{VERIFY_BASE}?id={cfdi.tfd['UUID']}"
        f"&re={quote(cfdi.emisor.get('Rfc', ''), safe='')}"
        f"&rr={quote(cfdi.receptor.get('Rfc', ''), safe='')}"
        f"&tt={_tt(cfdi.attrs.get('Total', '0'))}"
        f"&fe={cfdi.attrs.get('Sello', '')[-8:]}"
    )


# --- fonts ----------------------------------------------------------------------------

_FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",  # Debian, Ubuntu
    "/usr/share/fonts/dejavu",  # Fedora, Alpine
    "/usr/share/fonts/TTF",  # Arch
    "/usr/share/fonts/dejavu-sans-fonts",  # newer Fedora
    "/usr/local/share/fonts",
    "/Library/Fonts",
    os.path.expanduser("~/.fonts"),
    os.path.expanduser("~/.local/share/fonts"),
)


@functools.lru_cache(maxsize=1)
def find_unicode_font() -> tuple[str, str] | None:
    """(regular, bold) paths of DejaVu Sans, or None: the usual directories first, then
    ``fc-match`` (accepted only when it answers with DejaVu Sans .ttf files). Bold falls back
    to the regular file."""
    for directory in _FONT_DIRS:
        regular = os.path.join(directory, "DejaVuSans.ttf")
        if os.path.isfile(regular):
            bold = os.path.join(directory, "DejaVuSans-Bold.ttf")
            return regular, bold if os.path.isfile(bold) else regular
    if shutil.which("fc-match"):
        found = []
        for pattern in ("DejaVu Sans:style=Book", "DejaVu Sans:style=Bold"):
            try:
                out = subprocess.run(
                    ["fc-match", "-f", "%{file}", pattern], capture_output=True, text=True, timeout=5
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                out = ""
            ok = out.lower().endswith(".ttf") and "dejavusans" in os.path.basename(out).lower() and os.path.isfile(out)
            found.append(out if ok else None)
        if found[0]:
            return found[0], found[1] or found[0]
    return None


# --- layout -----------------------------------------------------------------------------

MARGIN = 12.0
FONT = 6.8  # table font size, pt
LINE = 3.0  # table line height, mm
PAD = 0.8  # horizontal padding inside a table cell, mm
GRAY = (235, 235, 235)
DARK = (60, 60, 60)
RED = (200, 16, 16)

# (heading, width mm, align); widths add up to the Letter page width minus both margins.
COLUMNS = (
    ("No. identificación", 25.0, "L"),
    ("Clave SAT", 20.0, "L"),
    ("Descripción", 50.9, "L"),
    ("Cantidad", 14.0, "R"),
    ("Valor unitario", 18.0, "R"),
    ("Descuento", 16.0, "R"),
    ("Impuestos", 29.0, "L"),
    ("Importe", 19.0, "R"),
)


def _number(text: str | None, places: int | None = None) -> str:
    """'1234.5' -> '1,234.50' (places=2 at least for money); quantities keep their digits."""
    if text is None or text == "":
        return ""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    if places is None:
        value = value.normalize()
        digits = max(0, -value.as_tuple().exponent)
    else:
        digits = max(places, -value.as_tuple().exponent)
    return f"{value:,.{digits}f}"


def _money(text: str | None) -> str:
    return _number(text, 2)


# Latin letters NFKD does not reduce to ASCII.
_NO_DECOMPOSITION = {"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "ı": "i", "Ŀ": "L", "ŀ": "l"}


class _Doc(FPDF):
    def __init__(self, cfdi: Cfdi, sandbox: bool, font: tuple[str, str] | None):
        super().__init__(orientation="P", unit="mm", format="Letter")
        self.cfdi = cfdi
        self.sandbox = sandbox
        self.unicode = font is not None
        if font:
            self.add_font("Doc", "", font[0])
            self.add_font("Doc", "B", font[1])
            self.doc_family = "Doc"
        else:
            self.core_fonts_encoding = "windows-1252"
            self.doc_family = "Helvetica"
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(True, margin=14)
        self.set_title(f"CFDI {cfdi.tfd.get('UUID', '')}")
        self.set_author(cfdi.emisor.get("Nombre", ""))
        self.set_creator("pos-ticket-agent")
        self.width = self.w - 2 * MARGIN
        self.alias_nb_pages()

    # Text the core font cannot draw becomes its closest windows-1252 form.
    def t(self, text: str) -> str:
        if self.unicode or not text:
            return text
        try:
            text.encode("cp1252")
            return text
        except UnicodeEncodeError:
            out = []
            for ch in text:
                try:
                    ch.encode("cp1252")
                    out.append(ch)
                except UnicodeEncodeError:
                    base = _NO_DECOMPOSITION.get(ch) or unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
                    out.append(base or "?")
            return "".join(out)

    def font(self, size: float, bold: bool = False, color=(0, 0, 0)) -> None:
        self.set_font(self.doc_family, "B" if bold else "", size)
        self.set_text_color(*color)

    def fit(self, text: str, width: float) -> str:
        """``text`` on one line, cut with an ellipsis when wider than ``width``."""
        text = self.t(text or "")
        if self.get_string_width(text) <= width:
            return text
        while text and self.get_string_width(text + "…") > width:
            text = text[:-1]
        return text.rstrip() + "…"

    def wrap(self, text: str, width: float, max_lines: int = 40) -> list[str]:
        """Greedy word wrap in the current font; words longer than a line are cut."""
        text = self.t(text or "")
        if self.get_string_width(text) <= width:
            return [text]
        lines: list[str] = []
        current = ""
        for word in text.split():
            candidate = f"{current} {word}" if current else word
            if self.get_string_width(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            while len(lines) <= max_lines and (word_w := self.get_string_width(word)) > width:
                cut = max(1, int(len(word) * width / word_w))  # a guess, then corrected
                while cut > 1 and self.get_string_width(word[:cut]) > width:
                    cut -= 1
                while cut + 1 < len(word) and self.get_string_width(word[: cut + 1]) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
            if len(lines) > max_lines:
                break
        if current:
            lines.append(current)
        if len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = lines[-1][:-3] + "..."
        return lines or [""]

    # --- every page ---

    def header(self) -> None:
        if self.sandbox:
            self.set_fill_color(*RED)
            self.rect(MARGIN, 6, self.width, 12.5, style="F")
            self.set_xy(MARGIN, 6.8)
            self.font(13, True, (255, 255, 255))
            self.cell(self.width, 6, self.t(SANDBOX_BANNER), align="C")
            self.set_xy(MARGIN, 12.6)
            self.font(7, False, (255, 255, 255))
            self.cell(self.width, 4.5, self.t(SANDBOX_NOTE), align="C")
            self.set_y(21)
        else:
            self.set_y(MARGIN)
        if self.page_no() > 1:
            c = self.cfdi
            self.font(8)
            right = self.t(f"{c.serie_folio}   Folio fiscal {c.tfd.get('UUID', '')}".strip())
            right_w = self.get_string_width(right) + 1
            self.font(8, True)
            left_w = self.width - right_w - 4
            rfc = self.t(f"  ·  RFC {c.emisor.get('Rfc', '')}")
            name = self.fit(c.emisor.get("Nombre", ""), left_w - self.get_string_width(rfc))
            self.cell(left_w + 4, 4.5, name + rfc)
            self.font(8)
            self.cell(right_w, 4.5, right, align="R", new_x="LMARGIN", new_y="NEXT")
            self.set_draw_color(150, 150, 150)
            self.line(MARGIN, self.get_y() + 0.8, MARGIN + self.width, self.get_y() + 0.8)
            self.set_y(self.get_y() + 2.5)

    def footer(self) -> None:
        self.set_y(-11)
        self.font(7, False, (110, 110, 110))
        left = f"Folio fiscal {self.cfdi.tfd.get('UUID', '')}"
        if self.sandbox:
            left += "   " + SANDBOX_BANNER
        self.cell(self.width * 0.7, 4, self.t(left))
        self.cell(self.width * 0.3, 4, f"Página {self.page_no()} de {{nb}}", align="R")

    # --- blocks ---

    def section(self, title: str) -> None:
        if self.will_page_break(16):
            self.add_page()
        self.set_y(self.get_y() + 1.5)
        self.set_fill_color(*DARK)
        self.font(8, True, (255, 255, 255))
        self.cell(self.width, 5, self.t("  " + title), fill=True, new_x="LMARGIN", new_y="NEXT")
        self.set_y(self.get_y() + 1)

    def fields(self, items: list[tuple[str, str]], columns: int = 2, x: float | None = None,
               width: float | None = None, size: float = 8.0) -> None:
        """Label: value pairs in ``columns`` columns, values wrapped."""
        x0 = MARGIN if x is None else x
        total = self.width if width is None else width
        cw = total / columns
        lh = size * 0.48
        for start in range(0, len(items), columns):
            row = items[start : start + columns]
            y = self.get_y()
            cells = []
            for label, value in row:
                self.font(size, True, DARK)
                lw = self.get_string_width(self.t(label + ": ")) + 0.5
                self.font(size)
                lines = self.wrap(value, cw - lw - 2) if lw < cw * 0.6 else None
                if lines is None:  # a long label: value on the lines below it
                    lines = [""] + self.wrap(value, cw - 2)
                cells.append((label, lw, lines))
            height = max(len(lines) for _, _, lines in cells) * lh
            if y + height > self.page_break_trigger:
                self.add_page()
                y = self.get_y()
            for i, (label, lw, lines) in enumerate(cells):
                cx = x0 + i * cw
                self.set_xy(cx, y)
                self.font(size, True, DARK)
                self.cell(lw, lh, self.t(label + ":"))
                self.font(size)
                for n, line in enumerate(lines):
                    indent = 0 if (n and lines[0] == "") else lw
                    self.set_xy(cx + indent, y + n * lh)
                    self.cell(cw - indent - 1, lh, line)
            self.set_y(y + height + 0.6)

    def top(self) -> None:
        c = self.cfdi
        y0 = self.get_y()
        left_w = self.width * 0.56
        # Emisor, left.
        self.font(13, True)
        for line in self.wrap(c.emisor.get("Nombre", ""), left_w - 2, 3):
            self.cell(left_w, 6, line, new_x="LMARGIN", new_y="NEXT")
        self.fields([("RFC", c.emisor.get("Rfc", ""))], 1, MARGIN, left_w, 9)
        self.fields([("Régimen fiscal", named(REGIMEN_FISCAL, c.emisor.get("RegimenFiscal")))], 1, MARGIN, left_w, 8)
        self.fields([("Lugar de expedición (C.P.)", c.attrs.get("LugarExpedicion", ""))], 1, MARGIN, left_w, 8)
        y_left = self.get_y()
        # The document, right, in a box.
        bx = MARGIN + left_w + 3
        bw = self.width - left_w - 3
        self.set_xy(bx, y0)
        tipo = c.attrs.get("TipoDeComprobante", "")
        title = ("FACTURA GLOBAL" if c.is_global else "FACTURA") if tipo == "I" else f"CFDI DE {TIPO_COMPROBANTE.get(tipo, tipo).upper()}"
        self.set_fill_color(*DARK)
        self.font(11, True, (255, 255, 255))
        self.cell(bw, 7, self.t(title), align="C", fill=True, new_x="LEFT", new_y="NEXT")
        self.set_y(self.get_y() + 1)
        items = [
            ("Serie y folio", c.serie_folio or "—"),
            ("Fecha de emisión", c.attrs.get("Fecha", "").replace("T", " ")),
            ("Folio fiscal (UUID)", ""),
            ("", c.tfd.get("UUID", "")),
            ("Fecha de timbrado", c.tfd.get("FechaTimbrado", "").replace("T", " ")),
            ("Tipo de comprobante", named(TIPO_COMPROBANTE, tipo)),
            ("Certificado del emisor", c.attrs.get("NoCertificado", "")),
            ("Certificado del SAT", c.tfd.get("NoCertificadoSAT", "")),
        ]
        self.font(7.5, True)
        lw = max(self.get_string_width(self.t(label + ":")) for label, _ in items) + 2
        for label, value in items:
            self.set_x(bx + 1.5)
            if label:
                self.font(7.5, True, DARK)
                self.cell(lw, 4, self.t(label + ":"))
                self.font(7.5)
                self.cell(bw - lw - 3, 4, self.t(value), new_x="LMARGIN", new_y="NEXT")
            else:
                self.font(8.5, True)
                self.cell(bw - 3, 4.5, self.t(value), align="C", new_x="LMARGIN", new_y="NEXT")
        y_right = self.get_y() + 1
        self.set_draw_color(150, 150, 150)
        self.rect(bx, y0, bw, y_right - y0)
        self.set_y(max(y_left, y_right) + 1)

    def receptor(self) -> None:
        r = self.cfdi.receptor
        self.section("RECEPTOR")
        self.fields([
            ("Nombre", r.get("Nombre", "")),
            ("RFC", r.get("Rfc", "")),
            ("Domicilio fiscal (C.P.)", r.get("DomicilioFiscalReceptor", "")),
            ("Régimen fiscal", named(REGIMEN_FISCAL, r.get("RegimenFiscalReceptor"))),
            ("Uso del CFDI", named(USO_CFDI, r.get("UsoCFDI"))),
        ] + ([("Residencia fiscal", r["ResidenciaFiscal"])] if r.get("ResidenciaFiscal") else [])
          + ([("NumRegIdTrib", r["NumRegIdTrib"])] if r.get("NumRegIdTrib") else []))

    def global_info(self) -> None:
        info = self.cfdi.informacion_global
        if info is None:
            return
        self.section("INFORMACIÓN GLOBAL")
        self.fields([
            ("Periodicidad", named(PERIODICIDAD, info.get("Periodicidad"))),
            ("Meses", named(MESES, info.get("Meses"))),
            ("Año", info.get("Año", "")),
        ], 3)

    def payment(self) -> None:
        a = self.cfdi.attrs
        items = [
            ("Forma de pago", named(FORMA_PAGO, a.get("FormaPago")) or "—"),
            ("Método de pago", named(METODO_PAGO, a.get("MetodoPago")) or "—"),
            ("Moneda", a.get("Moneda", "") + (f" (tipo de cambio {a['TipoCambio']})" if a.get("TipoCambio") else "")),
            ("Exportación", named(EXPORTACION, a.get("Exportacion"))),
        ]
        if a.get("CondicionesDePago"):
            items.append(("Condiciones de pago", a["CondicionesDePago"]))
        self.section("PAGO")
        self.fields(items)
        for tipo, uuids in self.cfdi.relacionados:
            self.section("CFDI RELACIONADOS")
            self.fields([("Tipo de relación", named(TIPO_RELACION, tipo))], 1)
            self.fields([("UUID", u) for u in uuids], 2)

    # The table: the hot loop for a 5,000-ticket global, kept to plain cell() calls.

    def _table_head(self) -> None:
        self.font(FONT, True, (255, 255, 255))
        heads = [self.wrap(h, w - 2 * PAD) for h, w, _ in COLUMNS]
        height = max(len(h) for h in heads) * LINE + 1.2
        y = self.get_y()
        self.set_fill_color(*DARK)
        self.rect(MARGIN, y, self.width, height, style="F")
        self._row(heads, y, height, 0.6)
        self.font(FONT)

    def _row(self, cells: list[list[str]], y: float, height: float, top: float) -> None:
        """One table row: each column's wrapped lines, in the column's alignment."""
        x = MARGIN
        for (_, w, align), lines in zip(COLUMNS, cells):
            for n, line in enumerate(lines):
                self.set_xy(x + PAD, y + top + n * LINE)
                self.cell(w - 2 * PAD, LINE, line, align=align)
            x += w
        self.set_y(y + height)

    def conceptos(self) -> None:
        self.section(f"CONCEPTOS ({len(self.cfdi.conceptos):,})")
        if self.will_page_break(14):
            self.add_page()
        self._table_head()
        bottom = self.page_break_trigger
        max_lines = int((bottom - 40) // LINE)
        self.set_fill_color(*GRAY)
        inner = [w - 2 * PAD for _, w, _ in COLUMNS]
        for i, c in enumerate(self.cfdi.conceptos):
            clave = f"{c.clave_prod_serv} {c.clave_unidad}".strip()
            taxes = [
                f"{t.label}: {_money(t.importe)}" if t.importe else t.label for t in c.taxes
            ] or ["—"]
            cols = [
                self.wrap(c.no_identificacion, inner[0], max_lines),
                self.wrap(clave, inner[1], max_lines),
                self.wrap(c.descripcion + (f" ({c.unidad})" if c.unidad else ""), inner[2], max_lines),
                self.wrap(_number(c.cantidad), inner[3]),
                self.wrap(_money(c.valor_unitario), inner[4]),
                self.wrap(_money(c.descuento) if c.descuento else "", inner[5]),
                [line for tax in taxes for line in self.wrap(tax, inner[6], max_lines)],
                self.wrap(_money(c.importe), inner[7]),
            ]
            height = max(len(col) for col in cols) * LINE + 0.8
            y = self.get_y()
            if y + height > bottom:
                self.add_page()
                self._table_head()
                self.set_fill_color(*GRAY)
                y = self.get_y()
            if i % 2:
                self.rect(MARGIN, y, self.width, height, style="F")
            self._row(cols, y, height, 0.4)
        self.set_draw_color(60, 60, 60)
        self.line(MARGIN, self.get_y(), MARGIN + self.width, self.get_y())
        self.set_y(self.get_y() + 2)

    def totals(self) -> None:
        c = self.cfdi
        a = c.attrs
        rows: list[tuple[str, str, bool]] = [("Subtotal", _money(a.get("SubTotal")), False)]
        if a.get("Descuento"):
            rows.append(("Descuento", "-" + _money(a["Descuento"]), False))
        for t in c.traslados:
            base = f" (base {_money(t.base)})" if t.base else ""
            rows.append((f"{t.label}{base}", _money(t.importe) if t.importe else "Exento", False))
        for t in c.retenciones:
            rows.append((t.label, "-" + _money(t.importe), False))
        if c.impuestos.get("TotalImpuestosTrasladados"):
            rows.append(("Total impuestos trasladados", _money(c.impuestos["TotalImpuestosTrasladados"]), False))
        if c.impuestos.get("TotalImpuestosRetenidos"):
            rows.append(("Total impuestos retenidos", "-" + _money(c.impuestos["TotalImpuestosRetenidos"]), False))
        rows.append((f"Total {a.get('Moneda', '')}".strip(), "$ " + _money(a.get("Total")), True))
        height = len(rows) * 4.6 + 4
        if self.will_page_break(height):
            self.add_page()
        widths = []
        for label, value, bold in rows:
            self.font(10 if bold else 8.5, True)
            widths.append((self.get_string_width(self.t(label)), self.get_string_width(value)))
        w_label = max(62.0, max(w for w, _ in widths) + 4)
        w_value = max(30.0, max(w for _, w in widths) + 4)
        x = MARGIN + self.width - w_label - w_value
        for label, value, bold in rows:
            self.set_x(x)
            if bold:
                self.set_fill_color(*DARK)
                self.font(10, True, (255, 255, 255))
                self.cell(w_label, 6.5, self.t(label), align="R", fill=True)
                self.cell(w_value, 6.5, value, align="R", fill=True, new_x="LMARGIN", new_y="NEXT")
            else:
                self.font(8, True, DARK)
                self.cell(w_label, 4.6, self.t(label), align="R")
                self.font(8.5)
                self.cell(w_value, 4.6, value, align="R", new_x="LMARGIN", new_y="NEXT")
        self.set_y(self.get_y() + 3)

    def timbre(self, url: str) -> None:
        c = self.cfdi
        size = 34.0
        if self.will_page_break(size + 16):
            self.add_page()
        self.section("TIMBRE FISCAL DIGITAL")
        y = self.get_y()
        self.image(_qr_png(url), x=MARGIN, y=y, w=size, h=size)
        x = MARGIN + size + 4
        w = self.width - size - 4
        self.set_xy(x, y)
        self.font(7.5, True, DARK)
        self.cell(w, 4, self.t("Verificación en el SAT:"), new_x="LEFT", new_y="NEXT")
        self.font(7)
        # The URL has no spaces: break it before a "&" where it can, anywhere otherwise.
        for line in self.wrap(url.replace("&", " &"), w - 1):
            self.cell(w, 3.4, line.replace(" &", "&"), new_x="LEFT", new_y="NEXT", link=url)
        self.set_y(self.get_y() + 1)
        for label, value in (
            ("Sello digital del CFDI (últimos 40)", "…" + c.attrs.get("Sello", "")[-40:]),
            ("Sello del SAT (últimos 40)", "…" + c.tfd.get("SelloSAT", "")[-40:]),
            ("RFC del proveedor de certificación", c.tfd.get("RfcProvCertif", "")),
        ):
            self.set_x(x)
            self.font(7.5, True, DARK)
            self.cell(w, 3.6, self.t(label + ":"), new_x="LEFT", new_y="NEXT")
            self.font(7.5)
            self.cell(w, 3.8, self.t(value), new_x="LEFT", new_y="NEXT")
        if c.tfd.get("Leyenda"):
            self.set_x(x)
            self.font(7.5, True, DARK)
            self.cell(w, 3.8, self.t("Leyenda: ") , new_x="END")
            self.font(7.5)
            self.cell(w - 12, 3.8, self.t(c.tfd["Leyenda"]), new_x="LEFT", new_y="NEXT")
        self.set_y(max(self.get_y(), y + size) + 3)
        self.set_x(MARGIN)
        if self.sandbox:
            self.font(9, True, RED)
            self.multi_cell(self.width, 4.5, self.t(SANDBOX_NOTE + " No lo entregue como comprobante fiscal."),
                            align="C", new_x="LMARGIN", new_y="NEXT")
        else:
            self.font(7.5, False, DARK)
            self.multi_cell(self.width, 4, self.t("Este documento es una representación impresa de un CFDI."),
                            align="C", new_x="LMARGIN", new_y="NEXT")


def _qr_png(url: str) -> io.BytesIO:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4)
    qr.add_data(url)
    qr.make(fit=True)
    image = qr.make_image(fill_color="black", back_color="white").get_image().convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def render_pdf(xml: bytes) -> bytes:
    """The PDF of a stamped CFDI 4.0; ValueError if ``xml`` is not one."""
    cfdi = parse_cfdi(xml)
    url = _verification_url(cfdi)
    doc = _Doc(cfdi, is_sandbox_stamp(xml), find_unicode_font())
    doc.add_page()
    doc.top()
    doc.receptor()
    doc.global_info()
    doc.payment()
    doc.conceptos()
    doc.totals()
    doc.timbre(url)
    return bytes(doc.output())
