"""Test CFDI 4.0 documents built as plain strings, for the sandbox stamp and PDF tests.

Signed-looking, not signed: ``FAKE_SELLO`` is 256 bytes of base64 that no key made (the
stamp test that needs a real signature makes its own). Indented on purpose, so that a stamp
which re-serialised the document would show in a byte comparison. Amounts are computed here
with Decimal, to the cent, the way the Guía de llenado does.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from xml.sax.saxutils import quoteattr

CENT = Decimal("0.01")

FAKE_SELLO = base64.b64encode(b"".join(hashlib.sha256(bytes([i])).digest() for i in range(8))).decode()
FAKE_CERTIFICADO = base64.b64encode(b"not a certificate " * 40).decode()
NO_CERTIFICADO = "30001000000500003416"

EMISOR = {"Rfc": "EKU9003173C9", "Nombre": "ABARROTES LA PEÑA DE SANTA MARÍA", "RegimenFiscal": "601"}
PUBLICO = {
    "Rfc": "XAXX010101000",
    "Nombre": "PUBLICO EN GENERAL",
    "DomicilioFiscalReceptor": "68050",
    "RegimenFiscalReceptor": "616",
    "UsoCFDI": "S01",
}
CUSTOMER = {
    "Rfc": "PECM800101AB1",
    "Nombre": "MARÍA JOSÉ PEÑA CASTAÑEDA",
    "DomicilioFiscalReceptor": "06600",
    "RegimenFiscalReceptor": "612",
    "UsoCFDI": "G03",
}

IVA16 = ("002", "Tasa", "0.160000")
IVA0 = ("002", "Tasa", "0.000000")
IEPS8 = ("003", "Tasa", "0.080000")
IVA_EXENTO = ("002", "Exento", None)


@dataclass
class Line:
    number: str  # NoIdentificacion: the ticket number
    valor_unitario: str
    taxes: list = field(default_factory=lambda: [IVA16])
    descuento: str | None = None
    descripcion: str = "Venta"
    cantidad: str = "1"
    clave_prod_serv: str = "01010101"
    clave_unidad: str = "ACT"
    unidad: str | None = None


# Three tickets with every kind of summary line: IVA 16% (with a discount), IEPS 8% with
# IVA 0% (snacks), IVA Exento.
THREE_TICKETS = [
    Line("A-0001", "140.00", [IVA16], descuento="10.00"),
    Line("A-0002", "359.98", [IEPS8, IVA0]),
    Line("A-0003", "355.00", [IVA_EXENTO]),
]
# What THREE_TICKETS add up to (checked by hand: 854.98 - 10.00 + 20.80 + 28.80 + 0.00).
THREE_TOTALS = {"SubTotal": "854.98", "Descuento": "10.00", "TotalImpuestosTrasladados": "49.60", "Total": "894.58"}


def _r(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _attrs(values: dict) -> str:
    return "".join(f" {k}={quoteattr(str(v))}" for k, v in values.items() if v is not None)


def comprobante(
    lines: list[Line],
    *,
    receptor: dict = PUBLICO,
    emisor: dict = EMISOR,
    informacion_global: dict | None = None,
    serie: str | None = "FG",
    folio: str | None = "1",
    fecha: str = "2023-03-02T09:00:00",
    forma_pago: str = "01",
    metodo_pago: str = "PUE",
    lugar: str = "68050",
    sello: str | None = FAKE_SELLO,
    complemento: str | None = None,
    addenda: str | None = None,
    relacionados: tuple[str, list[str]] | None = None,
) -> bytes:
    """A CFDI 4.0 (unstamped) with one Concepto per line. ``sello=None`` leaves it unsigned;
    ``complemento``/``addenda`` are raw inner XML (``""`` for an empty element)."""
    subtotal = Decimal(0)
    descuento = Decimal(0)
    summary: dict[tuple, list[Decimal]] = {}
    conceptos = []
    for line in lines:
        importe = _r(Decimal(line.cantidad) * Decimal(line.valor_unitario))
        subtotal += importe
        base = importe
        if line.descuento is not None:
            descuento += Decimal(line.descuento)
            base -= Decimal(line.descuento)
        traslados = []
        for impuesto, factor, tasa in line.taxes:
            key = (impuesto, factor, tasa)
            amount = None if tasa is None else _r(base * Decimal(tasa))
            sums = summary.setdefault(key, [Decimal(0), Decimal(0)])
            sums[0] += base
            if amount is not None:
                sums[1] += amount
            traslados.append(
                "          <cfdi:Traslado"
                + _attrs({"Base": f"{base:.2f}", "Impuesto": impuesto, "TipoFactor": factor, "TasaOCuota": tasa,
                          "Importe": None if amount is None else f"{amount:.2f}"})
                + "/>\n"
            )
        conceptos.append(
            "    <cfdi:Concepto"
            + _attrs({
                "ClaveProdServ": line.clave_prod_serv, "NoIdentificacion": line.number, "Cantidad": line.cantidad,
                "ClaveUnidad": line.clave_unidad, "Unidad": line.unidad, "Descripcion": line.descripcion,
                "ValorUnitario": line.valor_unitario, "Importe": f"{importe:.2f}", "Descuento": line.descuento,
                "ObjetoImp": "02",
            })
            + ">\n      <cfdi:Impuestos>\n        <cfdi:Traslados>\n"
            + "".join(traslados)
            + "        </cfdi:Traslados>\n      </cfdi:Impuestos>\n    </cfdi:Concepto>\n"
        )
    total_trasladados = sum((_r(s[1]) for k, s in summary.items() if k[2] is not None), Decimal(0))
    total = _r(subtotal) - descuento + total_trasladados
    summary_xml = "".join(
        "      <cfdi:Traslado"
        + _attrs({"Base": f"{_r(s[0]):.2f}", "Impuesto": k[0], "TipoFactor": k[1], "TasaOCuota": k[2],
                  "Importe": None if k[2] is None else f"{_r(s[1]):.2f}"})
        + "/>\n"
        for k, s in summary.items()
    )
    head = _attrs({
        "Version": "4.0", "Serie": serie, "Folio": folio, "Fecha": fecha, "Sello": sello, "FormaPago": forma_pago,
        "NoCertificado": NO_CERTIFICADO, "Certificado": FAKE_CERTIFICADO, "SubTotal": f"{_r(subtotal):.2f}",
        "Descuento": f"{descuento:.2f}" if descuento else None, "Moneda": "MXN", "Total": f"{total:.2f}",
        "TipoDeComprobante": "I", "Exportacion": "01", "MetodoPago": metodo_pago, "LugarExpedicion": lugar,
    })
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<cfdi:Comprobante xmlns:cfdi="http://www.sat.gob.mx/cfd/4" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.sat.gob.mx/cfd/4 http://www.sat.gob.mx/sitio_internet/cfd/4/cfdv40.xsd"'
        f"{head}>\n",
    ]
    if informacion_global:
        parts.append(f"  <cfdi:InformacionGlobal{_attrs(informacion_global)}/>\n")
    if relacionados:
        tipo, uuids = relacionados
        parts.append(f'  <cfdi:CfdiRelacionados TipoRelacion="{tipo}">\n')
        parts += [f'    <cfdi:CfdiRelacionado UUID="{u}"/>\n' for u in uuids]
        parts.append("  </cfdi:CfdiRelacionados>\n")
    parts += [
        f"  <cfdi:Emisor{_attrs(emisor)}/>\n",
        f"  <cfdi:Receptor{_attrs(receptor)}/>\n",
        "  <cfdi:Conceptos>\n", *conceptos, "  </cfdi:Conceptos>\n",
        f'  <cfdi:Impuestos TotalImpuestosTrasladados="{total_trasladados:.2f}">\n',
        "    <cfdi:Traslados>\n", summary_xml, "    </cfdi:Traslados>\n",
        "  </cfdi:Impuestos>\n",
    ]
    if complemento is not None:
        parts.append(f"  <cfdi:Complemento>{complemento}</cfdi:Complemento>\n" if complemento else "  <cfdi:Complemento/>\n")
    if addenda is not None:
        parts.append(f"  <cfdi:Addenda>{addenda}</cfdi:Addenda>\n")
    parts.append("</cfdi:Comprobante>\n")
    return "".join(parts).encode("utf-8")


DAILY_MARCH_2023 = {"Periodicidad": "01", "Meses": "03", "Año": "2023"}


def global_cfdi(**kw) -> bytes:
    """The small global CFDI: THREE_TICKETS, daily, 1 March 2023."""
    kw.setdefault("informacion_global", DAILY_MARCH_2023)
    return comprobante(THREE_TICKETS, **kw)


def many_tickets(n: int) -> list[Line]:
    return [Line(f"T-{i:06d}", f"{Decimal(100 + i % 997) + Decimal(i % 100) / 100:.2f}") for i in range(1, n + 1)]


def global_cfdi_many(n: int = 5000, **kw) -> bytes:
    """A global CFDI with ``n`` tickets T-000001.. at IVA 16%, bimonthly Jan-Feb 2024."""
    kw.setdefault("informacion_global", {"Periodicidad": "05", "Meses": "13", "Año": "2024"})
    kw.setdefault("fecha", "2024-03-01T08:15:00")
    return comprobante(many_tickets(n), **kw)


CUSTOMER_LINES = [
    Line("7501000111206", "48.50", [IVA16], descripcion="Café de olla molido, bolsa de 500 g (edición año nuevo)",
         cantidad="2", clave_prod_serv="50201706", clave_unidad="H87", unidad="Pieza"),
    Line("7501055300075", "125.862069", [IEPS8, IVA0], descripcion="Cacahuates japoneses con chile piquín, "
         "paquete surtido para fiestas y reuniones familiares de fin de semana, 1 kg", cantidad="1",
         clave_prod_serv="50101716", clave_unidad="KGM", unidad="Kilogramo", descuento="5.00"),
]


def customer_cfdi(**kw) -> bytes:
    """A customer's own CFDI (self-invoiced ticket), paid by credit card."""
    kw.setdefault("receptor", CUSTOMER)
    kw.setdefault("serie", "F")
    kw.setdefault("folio", "1024")
    kw.setdefault("forma_pago", "04")
    return comprobante(CUSTOMER_LINES, **kw)


def with_other_pac_stamp(xml: bytes, uuid: str = "6F1C3B8E-2D4A-4E5F-9A7B-0C1D2E3F4A5B") -> bytes:
    """The CFDI with a TFD that is not the sandbox's (no Leyenda, a non-zero certificate)."""
    sello = xml.split(b' Sello="', 1)[1].split(b'"', 1)[0].decode()
    tfd = (
        '<tfd:TimbreFiscalDigital xmlns:tfd="http://www.sat.gob.mx/TimbreFiscalDigital" Version="1.1" '
        f'UUID="{uuid}" FechaTimbrado="2023-03-02T09:00:05" RfcProvCertif="SPR190613I52" SelloCFD="{sello}" '
        f'NoCertificadoSAT="30001000000500003456" SelloSAT="{FAKE_SELLO[::-1]}"/>'
    )
    return xml.replace(b"</cfdi:Comprobante>", f"<cfdi:Complemento>{tfd}</cfdi:Complemento></cfdi:Comprobante>".encode())
