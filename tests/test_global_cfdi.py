"""The factura global (sync.cfdi40): amounts, fields, cadena original, seal, XSD, split.

SAT's own artefacts are the referee: every cadena original is compared with the output of
SAT's cadenaoriginal_4_0.xslt, every seal is checked with cryptography against that
output, and documents are validated against SAT's cfdv40.xsd (all shipped by satcfdi).
"""
from __future__ import annotations

import base64
from datetime import date, datetime
from decimal import Decimal
from importlib import resources

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from csd_factory import make_csd

from agent.insumo import parse_insumo
from agent.money import round_money
from sync import cfdi40
from sync.cfdi40 import (
    HEADER_ALLOWANCE,
    PERIODICIDAD,
    CfdiInvalid,
    GlobalInvoice,
    GlobalTicket,
    Issuer,
    build_xml,
    cadena_original,
    check_ticket,
    months_code,
    split,
    totals,
    validate,
)
from sync.csd import load_csd

pytestmark = pytest.mark.both_databases  # tests/postgres.py

NS = {"cfdi": "http://www.sat.gob.mx/cfd/4"}
ISSUER = Issuer("EKU9003173C9", "ESCUELA KEMPER URGATE", "601")
D = Decimal


# --------------------------------------------------------------------------- helpers


def _sat_file(*parts):
    root = resources.files("satcfdi").joinpath(
        "transform", "schemas", "www.sat.gob.mx", "sitio_internet", "cfd"
    )
    return str(root.joinpath(*parts))


_XSLT = None


def sat_cadena(xml: bytes) -> str:
    """SAT's own cadena original: cadenaoriginal_4_0.xslt run by libxslt."""
    global _XSLT
    if _XSLT is None:
        _XSLT = etree.XSLT(etree.parse(_sat_file("4", "cadenaoriginal_4_0", "cadenaoriginal_4_0.xslt")))
    return str(_XSLT(etree.ElementTree(etree.fromstring(xml))))


def seal_verifies(xml: bytes, cadena: str) -> bool:
    """Check Sello with the certificate inside the XML, without sync.csd."""
    root = etree.fromstring(xml)
    cert = x509.load_der_x509_certificate(base64.b64decode(root.get("Certificado")))
    try:
        cert.public_key().verify(
            base64.b64decode(root.get("Sello")), cadena.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return False
    return True


def insumo(items, *, payment_form="01", when="2023-03-01T10:00:00", postal_code="42501"):
    """A CFD33BASE insumo text, as docs/insumo.md shows it.

    items: (price, discount, taxes), taxes: (Impuesto, TipoFactor, TasaOCuota, Base, Importe)
    as the POS writes them ("" for Exento's rate and amount). Header amounts are derived
    the way the parser checks them."""
    lines = []
    subtotal = discount = D(0)
    groups: dict = {}
    for n, (price, off, taxes) in enumerate(items, 1):
        subtotal += D(price)
        discount += D(off or "0")
        obj = "02" if taxes else "01"
        lines.append(f"02|01010101|SKU{n}|1|H87|Pieza|Artículo {n}|{price}|{price}|{off}|{obj}|")
        for tax, factor, rate, base, amount in taxes:
            lines.append(f"03|{tax}|{factor}|{rate}|{base}|{amount}|")
            if amount:
                key = (tax, factor, D(rate))
                groups[key] = groups.get(key, D(0)) + D(amount)
    subtotal, discount = round_money(subtotal), round_money(discount)
    total = subtotal - discount + sum((round_money(v) for v in groups.values()), D(0))
    return (
        "00|CFD33BASE|PROD|4.0|\n"
        f"01|A|1|{when}|{payment_form}|MXN||{subtotal}|{discount}|{total}|{postal_code}|\n"
        + "\n".join(lines)
        + "\n"
    )


def ticket(number, items, **kw) -> GlobalTicket:
    return GlobalTicket(number, parse_insumo(insumo(items, **kw)))


def iva16(price, off=""):
    base = D(price) - D(off or "0")
    return (price, off, [("002", "Tasa", "0.160000", str(base), str(round_money(base * D("0.16"))))])


def invoice(tickets, **kw) -> GlobalInvoice:
    values = dict(
        issuer=ISSUER,
        series="FG",
        folio="1",
        issued_at=datetime(2023, 3, 2, 9, 30, 0),
        postal_code="42501",
        periodicity="day",
        months="03",
        year=2023,
        tickets=tickets,
    )
    values.update(kw)
    return GlobalInvoice(**values)


@pytest.fixture(scope="module")
def csd(tmp_path_factory):
    return load_csd(*make_csd(tmp_path_factory.mktemp("csd")))


def attrs(el):
    return dict(el.attrib)


def assert_sat_consistent(xml: bytes):
    """Valid for SAT's XSD, our cadena equals SAT's XSLT, and the seal verifies on it."""
    validate(xml)
    sat = sat_cadena(xml)
    assert cadena_original(xml) == sat
    assert seal_verifies(xml, sat)
    return sat


# --------------------------------------------------------------------------- SAT's example


def sat_example_tickets():
    # Guía de llenado del CFDI global: three cash tickets of a day at IVA 16 %.
    return [ticket("T-0001", [iva16("130.00")]), ticket("T-0002", [iva16("359.98")]), ticket("T-0003", [iva16("355.00")])]


def test_sat_worked_example_field_by_field(csd):
    inv = invoice(sat_example_tickets())
    xml = build_xml(inv, csd)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = etree.fromstring(xml)

    c = attrs(root)
    assert c["Version"] == "4.0"
    assert c["Serie"] == "FG" and c["Folio"] == "1"
    assert c["Fecha"] == "2023-03-02T09:30:00"
    assert c["TipoDeComprobante"] == "I"
    assert c["Exportacion"] == "01"
    assert c["MetodoPago"] == "PUE"
    assert c["FormaPago"] == "01"
    assert c["Moneda"] == "MXN"
    assert c["LugarExpedicion"] == "42501"
    assert c["SubTotal"] == "844.98"
    assert c["Total"] == "980.18"
    assert "Descuento" not in c and "CondicionesDePago" not in c and "TipoCambio" not in c
    assert c["NoCertificado"] == csd.certificate_number
    assert c["Certificado"] == csd.certificate_base64

    assert attrs(root.find("cfdi:InformacionGlobal", NS)) == {"Periodicidad": "01", "Meses": "03", "Año": "2023"}
    assert attrs(root.find("cfdi:Emisor", NS)) == {"Rfc": "EKU9003173C9", "Nombre": "ESCUELA KEMPER URGATE", "RegimenFiscal": "601"}
    assert attrs(root.find("cfdi:Receptor", NS)) == {
        "Rfc": "XAXX010101000",
        "Nombre": "PUBLICO EN GENERAL",
        "DomicilioFiscalReceptor": "42501",
        "RegimenFiscalReceptor": "616",
        "UsoCFDI": "S01",
    }

    concepts = root.findall("cfdi:Conceptos/cfdi:Concepto", NS)
    assert len(concepts) == 3
    for concept, number, amount, tax in zip(
        concepts, ("T-0001", "T-0002", "T-0003"), ("130.00", "359.98", "355.00"), ("20.80", "57.60", "56.80")
    ):
        assert attrs(concept) == {
            "ClaveProdServ": "01010101",
            "NoIdentificacion": number,
            "Cantidad": "1",
            "ClaveUnidad": "ACT",
            "Descripcion": "Venta",
            "ValorUnitario": amount,
            "Importe": amount,
            "ObjetoImp": "02",
        }
        (traslado,) = concept.findall("cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado", NS)
        assert attrs(traslado) == {
            "Base": amount, "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.160000", "Importe": tax,
        }
        assert concept.find("cfdi:Impuestos/cfdi:Retenciones", NS) is None

    impuestos = root.find("cfdi:Impuestos", NS)
    assert attrs(impuestos) == {"TotalImpuestosTrasladados": "135.20"}
    (summary,) = impuestos.findall("cfdi:Traslados/cfdi:Traslado", NS)
    assert attrs(summary) == {
        "Base": "844.98", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.160000", "Importe": "135.20",
    }

    # Valid for SAT's XSD, and the Sello verifies (cryptography, not Csd.verify) against
    # the cadena original produced by SAT's XSLT.
    validate(xml)
    sat = sat_cadena(xml)
    assert seal_verifies(xml, sat)
    assert cadena_original(xml) == sat
    assert sat.startswith(f"||4.0|FG|1|2023-03-02T09:30:00|01|{csd.certificate_number}|844.98|MXN|980.18|I|01|PUE|42501|01|03|2023|")
    assert sat.endswith("|844.98|002|Tasa|0.160000|135.20|135.20||")


def test_sat_worked_example_totals():
    t = totals(invoice(sat_example_tickets()))
    assert t.subtotal == D("844.98")
    assert t.discount == 0
    assert t.transferred_taxes == D("135.20")
    assert t.total == D("980.18")
    assert t.concepts == 3
    assert t.payment_form == "01"
    assert t.iva == D("135.20") and t.ieps == 0
    assert [(s.tax, s.factor, s.base, s.amount) for s in t.taxes] == [("002", "Tasa", D("844.98"), D("135.20"))]


# --------------------------------------------------------------------------- amounts


# The richer example of docs/insumo.md: IVA 16 % / 0 % / exento, IEPS 8 % + IVA, discounts.
DOCS_EXAMPLE = [
    ("30.00", "3.00", [("002", "Tasa", "0.160000", "27.00", "4.32")]),
    ("53.00", "", [("002", "Tasa", "0.000000", "53.00", "0.00")]),
    ("45.00", "0.00", [("002", "Exento", "", "45.00", "")]),
    ("54.00", "4.00", [("003", "Tasa", "0.080000", "50.00", "4.00"), ("002", "Tasa", "0.160000", "54.00", "8.64")]),
]


def mixed_tickets():
    return [
        ticket("A-1", DOCS_EXAMPLE, payment_form="04"),
        # The 12.36 soft drink: six decimals, as the POS wrote them.
        ticket("A-2", [("10.655172", "", [("002", "Tasa", "0.160000", "10.655172", "1.704828")])], payment_form="01"),
        ticket("A-3", [("100.00", "10.00", [("002", "Exento", "", "90.00", "")])], payment_form="28"),
        ticket("A-4", [("50.00", "", [])], payment_form="03"),
    ]


def test_mixed_taxes_discounts_and_summary(csd):
    xml = build_xml(invoice(mixed_tickets()), csd)
    root = etree.fromstring(xml)
    concepts = root.findall("cfdi:Conceptos/cfdi:Concepto", NS)

    a1 = concepts[0]
    assert (a1.get("ValorUnitario"), a1.get("Importe"), a1.get("Descuento"), a1.get("ObjetoImp")) == (
        "182.00", "182.00", "7.00", "02",
    )
    # Per (Impuesto, TipoFactor, TasaOCuota), in order of first appearance in the ticket.
    assert [attrs(t) for t in a1.findall("cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado", NS)] == [
        {"Base": "81.00", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.160000", "Importe": "12.96"},
        {"Base": "53.00", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.000000", "Importe": "0.00"},
        {"Base": "45.00", "Impuesto": "002", "TipoFactor": "Exento"},
        {"Base": "50.00", "Impuesto": "003", "TipoFactor": "Tasa", "TasaOCuota": "0.080000", "Importe": "4.00"},
    ]

    a2 = concepts[1]
    # The ticket's SubTotal (10.66) is the Concepto's amount; its tax keeps six decimals.
    assert (a2.get("ValorUnitario"), a2.get("Descuento")) == ("10.66", None)
    assert [attrs(t) for t in a2.findall(".//cfdi:Traslado", NS)] == [
        {"Base": "10.655172", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.160000", "Importe": "1.704828"},
    ]

    a3 = concepts[2]
    assert (a3.get("Descuento"), a3.get("ObjetoImp")) == ("10.00", "02")
    assert [attrs(t) for t in a3.findall(".//cfdi:Traslado", NS)] == [
        {"Base": "90.00", "Impuesto": "002", "TipoFactor": "Exento"},
    ]

    a4 = concepts[3]
    # No taxes at all: ObjetoImp 01 and no Impuestos.
    assert a4.get("ObjetoImp") == "01" and len(a4) == 0

    impuestos = root.find("cfdi:Impuestos", NS)
    assert [attrs(t) for t in impuestos.findall("cfdi:Traslados/cfdi:Traslado", NS)] == [
        # 81.00 + 10.655172 = 91.655172 -> 91.66; 12.96 + 1.704828 = 14.664828 -> 14.66
        {"Base": "91.66", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.160000", "Importe": "14.66"},
        {"Base": "53.00", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.000000", "Importe": "0.00"},
        {"Base": "135.00", "Impuesto": "002", "TipoFactor": "Exento"},
        {"Base": "50.00", "Impuesto": "003", "TipoFactor": "Tasa", "TasaOCuota": "0.080000", "Importe": "4.00"},
    ]
    # Exento carries a Base only and adds nothing.
    assert impuestos.get("TotalImpuestosTrasladados") == "18.66"
    assert root.get("SubTotal") == "342.66"  # 182.00 + 10.66 + 100.00 + 50.00
    assert root.get("Descuento") == "17.00"
    assert root.get("Total") == "344.32"  # 342.66 - 17.00 + 18.66
    assert root.get("FormaPago") == "04"  # A-1 has the largest total (191.96)

    t = totals(invoice(mixed_tickets()))
    assert (t.subtotal, t.discount, t.transferred_taxes, t.total) == (D("342.66"), D("17.00"), D("18.66"), D("344.32"))
    assert (t.iva, t.ieps) == (D("14.66"), D("4.00"))
    assert_sat_consistent(xml)


def test_only_exento_leaves_total_impuestos_trasladados_out(csd):
    tickets = [ticket("E-1", [("45.00", "", [("002", "Exento", "", "45.00", "")])])]
    xml = build_xml(invoice(tickets), csd)
    root = etree.fromstring(xml)
    impuestos = root.find("cfdi:Impuestos", NS)
    assert "TotalImpuestosTrasladados" not in impuestos.attrib
    assert [attrs(t) for t in impuestos.findall(".//cfdi:Traslado", NS)] == [
        {"Base": "45.00", "Impuesto": "002", "TipoFactor": "Exento"}
    ]
    assert root.get("Total") == "45.00"
    assert totals(invoice(tickets)).transferred_taxes == 0
    assert_sat_consistent(xml)


def test_no_taxes_anywhere_has_no_impuestos(csd):
    xml = build_xml(invoice([ticket("N-1", [("50.00", "", [])])]), csd)
    root = etree.fromstring(xml)
    assert root.find("cfdi:Impuestos", NS) is None
    assert root.find("cfdi:Conceptos/cfdi:Concepto", NS).get("ObjetoImp") == "01"
    assert root.get("Total") == "50.00"
    assert_sat_consistent(xml)


def test_whole_peso_subtotal_is_written_with_cents(csd):
    xml = build_xml(invoice([ticket("W-1", [iva16("100")])]), csd)
    concept = etree.fromstring(xml).find("cfdi:Conceptos/cfdi:Concepto", NS)
    assert concept.get("ValorUnitario") == concept.get("Importe") == "100.00"
    assert_sat_consistent(xml)


def test_zero_subtotal_ticket_is_refused():
    zero = ticket("Z-0", [("0.00", "", [])])
    with pytest.raises(ValueError, match="'Z-0'.*SubTotal 0.00 is not greater than 0"):
        build_xml(invoice([ticket("A", [iva16("10.00")]), zero]))
    with pytest.raises(ValueError, match="Z-0"):
        check_ticket(zero)


def test_summed_line_taxes_outside_sat_bounds_are_stated_as_base_times_rate():
    # Three items of 1.03 with IVA rounded per line (0.16 each): each line is fine, but the
    # Concepto's Traslado, Base 3.09, may only carry 0.49 or 0.50, not 0.48. The period's
    # global CFDI must not be blocked by it: the Concepto states 3.09 x 0.16 = 0.4944.
    bad = ticket("R-7", [iva16("1.03"), iva16("1.03"), iva16("1.03")])
    check_ticket(bad)
    xml = build_xml(invoice([ticket("OK-1", [iva16("10.00")]), bad]))
    root = etree.fromstring(xml)
    [concept] = [c for c in root.iter("{http://www.sat.gob.mx/cfd/4}Concepto") if c.get("NoIdentificacion") == "R-7"]
    [traslado] = list(concept.iter("{http://www.sat.gob.mx/cfd/4}Traslado"))
    assert (traslado.get("Base"), traslado.get("Importe")) == ("3.09", "0.494400")
    assert totals(invoice([bad])).transferred_taxes == Decimal("0.49")


def test_the_same_ticket_twice_is_refused():
    with pytest.raises(ValueError, match="'T-1' appears twice"):
        build_xml(invoice([ticket("T-1", [iva16("10.00")]), ticket("T-1", [iva16("12.00")])]))


# --------------------------------------------------------------------------- FormaPago


def test_payment_form_of_the_largest_ticket():
    tickets = [
        ticket("P-1", [iva16("100.00")], payment_form="01"),
        ticket("P-2", [iva16("300.00")], payment_form="04"),
        ticket("P-3", [iva16("200.00")], payment_form="28"),
    ]
    assert totals(invoice(tickets)).payment_form == "04"
    assert etree.fromstring(build_xml(invoice(tickets))).get("FormaPago") == "04"


def test_payment_form_tie_takes_the_first_in_order():
    tickets = [
        ticket("P-1", [iva16("10.00")], payment_form="01"),
        ticket("P-2", [iva16("300.00")], payment_form="28"),
        ticket("P-3", [iva16("300.00")], payment_form="04"),
    ]
    assert totals(invoice(tickets)).payment_form == "28"
    assert totals(invoice(list(reversed(tickets)))).payment_form == "04"


def test_payment_form_99_is_passed_over():
    # MetodoPago PUE cannot go with 99 "Por definir": the largest ticket with a real form wins.
    tickets = [
        ticket("P-1", [iva16("10.00")], payment_form="04"),
        ticket("P-2", [iva16("300.00")], payment_form="99"),
        ticket("P-3", [iva16("20.00")], payment_form="01"),
    ]
    assert totals(invoice(tickets)).payment_form == "01"
    with pytest.raises(ValueError, match="every ticket has FormaPago 99"):
        totals(invoice([tickets[1]]))


# --------------------------------------------------------------------------- periods


@pytest.mark.parametrize("periodicity", ["day", "week", "fortnight", "month"])
def test_months_code_is_the_month_for_periodicities_01_to_04(periodicity):
    for month in range(1, 13):
        assert months_code(periodicity, date(2024, month, 1)) == f"{month:02d}"
    assert months_code(periodicity, date(2024, 12, 31)) == "12"


def test_months_code_bimesters_13_to_18():
    expected = {1: "13", 2: "13", 3: "14", 4: "14", 5: "15", 6: "15", 7: "16", 8: "16", 9: "17", 10: "17", 11: "18", 12: "18"}
    for month, code in expected.items():
        assert months_code("two_months", date(2024, month, 1)) == code


def test_months_code_unknown_periodicity():
    with pytest.raises(ValueError, match="unknown periodicity 'year'"):
        months_code("year", date(2024, 1, 1))


@pytest.mark.parametrize("periodicity,code", sorted(PERIODICIDAD.items()))
def test_every_periodicity_builds_a_valid_cfdi(csd, periodicity, code):
    issuer = Issuer(ISSUER.rfc, ISSUER.name, "621" if periodicity == "two_months" else "601")
    first = date(2023, 3, 1)
    inv = invoice(sat_example_tickets(), issuer=issuer, periodicity=periodicity, months=months_code(periodicity, first))
    xml = build_xml(inv, csd)
    g = etree.fromstring(xml).find("cfdi:InformacionGlobal", NS)
    assert g.get("Periodicidad") == code
    assert g.get("Meses") == ("14" if periodicity == "two_months" else "03")
    assert_sat_consistent(xml)


def test_two_months_needs_regime_621_and_bimester_codes():
    with pytest.raises(ValueError, match="only for tax regime 621"):
        build_xml(invoice(sat_example_tickets(), periodicity="two_months", months="14"))
    issuer = Issuer(ISSUER.rfc, ISSUER.name, "621")
    with pytest.raises(ValueError, match="13 .* 18"):
        build_xml(invoice(sat_example_tickets(), issuer=issuer, periodicity="two_months", months="03"))
    with pytest.raises(ValueError, match="01..12"):
        build_xml(invoice(sat_example_tickets(), months="14"))


def test_header_problems_are_refused(csd):
    from zoneinfo import ZoneInfo

    with pytest.raises(ValueError, match="without a zone"):
        build_xml(invoice(sat_example_tickets(), issued_at=datetime(2023, 3, 2, tzinfo=ZoneInfo("America/Mexico_City"))))
    with pytest.raises(ValueError, match="postal code"):
        build_xml(invoice(sat_example_tickets(), postal_code="4250"))
    with pytest.raises(ValueError, match="at least one ticket"):
        build_xml(invoice([]))
    other = Issuer("AAA010101AAA", "OTRA EMPRESA", "601")
    with pytest.raises(ValueError, match="CSD belongs to RFC EKU9003173C9, but the issuer is AAA010101AAA"):
        build_xml(invoice(sat_example_tickets(), issuer=other), csd)
    with pytest.raises(ValueError, match=r"contains '\|'"):
        build_xml(invoice([ticket("A|B", [iva16("10.00")])]))


# --------------------------------------------------------------------------- text


def test_special_characters_are_escaped_and_the_cadena_matches_sat(csd):
    issuer = Issuer("EKU9003173C9", 'KEMPER & "HIJOS" <MX> \'Ñandú\'', "601")
    tickets = [ticket('T&<">\'1', [iva16("10.00")]), ticket("Ñ-ü-€", [iva16("20.00")])]
    xml = build_xml(invoice(tickets, issuer=issuer, series="F&G", folio='<1>'), csd)
    assert b'Nombre="KEMPER &amp; &quot;HIJOS&quot; &lt;MX&gt; \'\xc3\x91and\xc3\xba\'"' in xml
    root = etree.fromstring(xml)
    assert root.find("cfdi:Emisor", NS).get("Nombre") == 'KEMPER & "HIJOS" <MX> \'Ñandú\''
    assert [c.get("NoIdentificacion") for c in root.iter("{%s}Concepto" % NS["cfdi"])] == ['T&<">\'1', "Ñ-ü-€"]
    assert (root.get("Serie"), root.get("Folio")) == ("F&G", "<1>")
    sat = assert_sat_consistent(xml)
    assert '|KEMPER & "HIJOS" <MX> \'Ñandú\'|' in sat
    assert "|T&<\">'1|" in sat


def test_white_space_is_normalized_in_the_cadena_as_sat_does(csd):
    issuer = Issuer("EKU9003173C9", "  KEMPER \t  URGATE\nNORTE  ", "601")
    xml = build_xml(invoice(sat_example_tickets(), issuer=issuer), csd)
    # The XML keeps the name as given (tab and newline as character references)...
    assert etree.fromstring(xml).find("cfdi:Emisor", NS).get("Nombre") == "  KEMPER \t  URGATE\nNORTE  "
    # ...and the cadena takes it through normalize-space(), like SAT's XSLT.
    sat = assert_sat_consistent(xml)
    assert "|KEMPER URGATE NORTE|" in sat


def test_characters_xml_cannot_carry_are_refused():
    with pytest.raises(ValueError, match="issuer name.*character XML cannot carry"):
        build_xml(invoice(sat_example_tickets(), issuer=Issuer("EKU9003173C9", "KEMPER\x07", "601")))


# --------------------------------------------------------------------------- cadena


def test_cadena_original_follows_sat_xslt_on_nodes_the_global_cfdi_lacks(csd):
    """cadena_original() reads any CFDI 4.0: add the nodes SAT's XSLT knows and compare."""
    root = etree.fromstring(build_xml(invoice(mixed_tickets()), csd))
    q = "{%s}" % NS["cfdi"]
    rel = etree.Element(q + "CfdiRelacionados", TipoRelacion="04")
    etree.SubElement(rel, q + "CfdiRelacionado", UUID="5FB2822E-396D-4725-8521-CDC4BDD20CCF")
    etree.SubElement(rel, q + "CfdiRelacionado", UUID="  a1b2c3d4-396D-4725-8521-CDC4BDD20CCF ")
    root.find(q + "Emisor").addprevious(rel)
    root.find(q + "Emisor").set("FacAtrAdquirente", "0123456789")
    root.find(q + "Receptor").set("NumRegIdTrib", "121585958")
    root.set("CondicionesDePago", "contado  ya")
    root.set("TipoCambio", "1")
    concept = root.find(q + "Conceptos/" + q + "Concepto")
    concept.set("Unidad", "Pieza")
    ret = etree.SubElement(concept.find(q + "Impuestos"), q + "Retenciones")
    etree.SubElement(ret, q + "Retencion", Base="100", Impuesto="001", TipoFactor="Tasa", TasaOCuota="0.100000", Importe="10.00")
    etree.SubElement(concept, q + "ACuentaTerceros", RfcACuentaTerceros="AAA010101AAA",
                     NombreACuentaTerceros="Tercero", RegimenFiscalACuentaTerceros="601",
                     DomicilioFiscalACuentaTerceros="01000")
    etree.SubElement(concept, q + "InformacionAduanera", NumeroPedimento="23  47  3807  8003832")
    etree.SubElement(concept, q + "CuentaPredial", Numero="15956011002")
    etree.SubElement(concept, q + "CuentaPredial", Numero="15956011003")
    parte = etree.SubElement(concept, q + "Parte", ClaveProdServ="51241200", Cantidad="1", Descripcion="Parte uno", Importe="5.00")
    etree.SubElement(parte, q + "InformacionAduanera", NumeroPedimento="23  47  3807  8003833")
    impuestos = root.find(q + "Impuestos")
    ret = etree.Element(q + "Retenciones")
    etree.SubElement(ret, q + "Retencion", Impuesto="001", Importe="10.00")
    impuestos.insert(0, ret)
    impuestos.set("TotalImpuestosRetenidos", "10.00")
    xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    assert cadena_original(xml) == sat_cadena(xml)


def test_cadena_original_with_a_complement_uses_sat_xslt(csd):
    root = etree.fromstring(build_xml(invoice(sat_example_tickets()), csd))
    comp = etree.SubElement(root, "{%s}Complemento" % NS["cfdi"])
    etree.SubElement(comp, "{http://www.sat.gob.mx/implocal}ImpuestosLocales", version="1.0",
                     TotaldeRetenciones="0.00", TotaldeTraslados="1.00")
    xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    assert cadena_original(xml) == sat_cadena(xml)
    assert "|1.0|0.00|1.00||" in cadena_original(xml)


def test_cadena_original_refuses_what_is_not_a_cfdi_40():
    with pytest.raises(ValueError, match="not a CFDI 4.0"):
        cadena_original(b'<cfdi:Comprobante xmlns:cfdi="http://www.sat.gob.mx/cfd/3" Version="3.3"/>')


# --------------------------------------------------------------------------- validation


def test_unsigned_build_fails_validation_for_the_missing_seal():
    xml = build_xml(invoice(sat_example_tickets()))
    root = etree.fromstring(xml)
    assert "Sello" not in root.attrib and "NoCertificado" not in root.attrib
    assert cadena_original(xml) == sat_cadena(xml)
    with pytest.raises(CfdiInvalid) as e:
        validate(xml)
    assert any("Sello" in p for p in e.value.problems)
    assert any("NoCertificado" in p for p in e.value.problems)


def test_tampered_field_fails_validation_with_a_clear_message(csd):
    xml = build_xml(invoice(sat_example_tickets()), csd)
    bad = xml.replace(b'UsoCFDI="S01"', b'UsoCFDI="X99"')
    with pytest.raises(CfdiInvalid) as e:
        validate(bad)
    assert len(e.value.problems) == 1
    problem = e.value.problems[0]
    assert "cfdi:Receptor" in problem and "UsoCFDI" in problem and "'X99'" in problem
    assert "UsoCFDI" in str(e.value) and "1 problem" in str(e.value)


def test_tampered_concept_names_the_concept(csd):
    xml = build_xml(invoice(sat_example_tickets()), csd)
    bad = xml.replace(b'NoIdentificacion="T-0002" Cantidad="1" ClaveUnidad="ACT"', b'NoIdentificacion="T-0002" Cantidad="1" ClaveUnidad="ZZZ"')
    with pytest.raises(CfdiInvalid) as e:
        validate(bad)
    (problem,) = e.value.problems
    assert problem.startswith("Concepto 2 (NoIdentificacion 'T-0002'): ")
    assert "ClaveUnidad" in problem and "'ZZZ'" in problem
    # The catalog is not pasted whole into the message.
    assert "SAT's catalog" in problem and len(problem) < 400


def test_tampered_amount_keeps_the_xsd_happy_but_breaks_the_seal(csd):
    xml = build_xml(invoice(sat_example_tickets()), csd)
    bad = xml.replace(b'Total="980.18"', b'Total="98.18"')
    validate(bad)  # the schema cannot know the arithmetic...
    assert not seal_verifies(bad, sat_cadena(bad))  # ...but the seal does


def test_not_well_formed_xml():
    xml = build_xml(invoice(sat_example_tickets()))
    with pytest.raises(CfdiInvalid, match="not well-formed|Premature end|expected"):
        validate(xml[:-40])
    with pytest.raises(CfdiInvalid, match="DOCTYPE"):
        validate(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x/>')


def many_tickets(n, *, taxes=True):
    result = []
    for i in range(n):
        price = f"{10 + i % 997}.{i % 100:02d}"
        if taxes and i % 5 == 0:
            item = (price, "", [("002", "Exento", "", price, "")])
        elif taxes:
            item = iva16(price, "1.00" if i % 7 == 0 else "")
        else:
            item = (price, "", [])
        result.append(ticket(f"M-{i:05d}", [item]))
    return result


@pytest.fixture(scope="module")
def big_xml(csd):
    return build_xml(invoice(many_tickets(4500), periodicity="month"), csd)


def test_large_document_is_validated_in_slices(big_xml, monkeypatch):
    monkeypatch.setattr(cfdi40, "_workers", lambda: 2)
    head, tail, parts = cfdi40._slices(big_xml)
    assert len(parts) == 3 and [p[2] for p in parts] == [0, 2000, 4000]
    # Slices cover every byte between the head and the tail, in order.
    assert head + b"".join(big_xml[a:b] for a, b, _ in parts) + tail == big_xml
    validate(big_xml)
    assert cadena_original(big_xml) == sat_cadena(big_xml)
    assert seal_verifies(big_xml, sat_cadena(big_xml))


def test_large_document_problem_names_the_concept_and_header_problems_once(big_xml, monkeypatch):
    monkeypatch.setattr(cfdi40, "_workers", lambda: 2)
    bad = big_xml.replace(b'NoIdentificacion="M-03210" Cantidad="1" ClaveUnidad="ACT"',
                          b'NoIdentificacion="M-03210" Cantidad="1" ClaveUnidad="ZZZ"')
    bad = bad.replace(b'Moneda="MXN"', b'Moneda="MXX"')
    with pytest.raises(CfdiInvalid) as e:
        validate(bad)
    problems = e.value.problems
    assert sum("Moneda" in p for p in problems) == 1
    (concept_problem,) = [p for p in problems if "ClaveUnidad" in p]
    assert concept_problem.startswith("Concepto 3211 (NoIdentificacion 'M-03210'): ")


def test_validation_stays_sound_when_the_slicing_is_fooled(big_xml, monkeypatch):
    # A comment that looks like a Concepto start makes a slice malformed; the whole
    # document is then judged as one, and it is valid.
    monkeypatch.setattr(cfdi40, "_workers", lambda: 2)
    marker = b'<cfdi:Concepto ClaveProdServ="01010101" NoIdentificacion="M-02000"'
    tricky = big_xml.replace(marker, b"<!-- <cfdi:Concepto x --> " + marker)
    head, tail, parts = cfdi40._slices(tricky)
    assert any(cfdi40._quick(head + tricky[a:b] + tail) for a, b, _ in parts)  # fooled
    validate(tricky)
    with pytest.raises(CfdiInvalid, match="Moneda"):
        validate(tricky.replace(b'Moneda="MXN"', b'Moneda="MXX"'))


# --------------------------------------------------------------------------- split


def test_split_respects_the_concept_cap_and_keeps_order():
    tickets = many_tickets(10, taxes=False)
    groups = split(tickets, max_concepts=3)
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert [t for g in groups for t in g] == tickets
    assert split(tickets) == [tickets]


def test_split_respects_the_byte_cap_and_every_group_fits(csd):
    tickets = many_tickets(40)
    cap = HEADER_ALLOWANCE + 3_000
    groups = split(tickets, max_bytes=cap)
    assert len(groups) > 2
    assert [t for g in groups for t in g] == tickets
    for g in groups:
        xml = build_xml(invoice(g), csd)
        assert len(xml) <= cap
        assert sum(len(cfdi40._render_concept(t, cfdi40._ticket_taxes(t))[0]) for t in g) <= cap - HEADER_ALLOWANCE
    # Groups are full: the next ticket would not have fitted.
    for g, nxt in zip(groups, groups[1:]):
        used = sum(cfdi40._concept_bytes(t) for t in g)
        assert used + cfdi40._concept_bytes(nxt[0]) > cap - HEADER_ALLOWANCE


def test_split_applies_both_caps_together():
    tickets = many_tickets(30)
    groups = split(tickets, max_concepts=4, max_bytes=HEADER_ALLOWANCE + 900)
    assert all(1 <= len(g) <= 4 for g in groups)
    assert all(sum(cfdi40._concept_bytes(t) for t in g) <= 900 for g in groups)
    assert [t for g in groups for t in g] == tickets


def test_split_refuses_bad_caps():
    with pytest.raises(ValueError, match="max_concepts"):
        split([], max_concepts=0)
    with pytest.raises(ValueError, match="alone takes"):
        split(many_tickets(1), max_bytes=HEADER_ALLOWANCE + 10)
    assert split([]) == []


# --------------------------------------------------------------------------- the schema as loaded


def test_the_loaded_product_catalog_accepts_exactly_sats_codes():
    # sat_schema() loads c_ClaveProdServ as union({01010101}, SAT's enumeration) because
    # libxml2 walks the whole enumeration per Concepto. Same set of codes, from the files:
    from sync.cfdi40 import GLOBAL_PRODUCT_CODE, catalog_with_fast_global_code, sat_schema_file

    xs = "{http://www.w3.org/2001/XMLSchema}"
    sat = etree.parse(str(sat_schema_file("catalogos", "catCFDI.xsd"))).getroot()
    loaded = etree.fromstring(catalog_with_fast_global_code())
    [original] = sat.findall(f"{xs}simpleType[@name='c_ClaveProdServ']")
    [kept] = loaded.findall(f"{xs}simpleType[@name='c_ClaveProdServ_catalogo']")
    sat_codes = [e.get("value") for e in original.iter(f"{xs}enumeration")]
    assert [e.get("value") for e in kept.iter(f"{xs}enumeration")] == sat_codes
    assert etree.tostring(kept.find(f"{xs}restriction")) == etree.tostring(original.find(f"{xs}restriction"))
    assert GLOBAL_PRODUCT_CODE in sat_codes  # so the union adds nothing
    [union] = loaded.findall(f"{xs}simpleType[@name='c_ClaveProdServ']")
    assert union.find(f"{xs}union").get("memberTypes").split() == [
        "catCFDI:c_ClaveProdServ_global", "catCFDI:c_ClaveProdServ_catalogo"
    ]
    # Nothing else in the catalog differs.
    others = lambda root: [etree.tostring(t) for t in root if not (t.get("name") or "").startswith("c_ClaveProdServ")]
    assert others(loaded) == others(sat)


def test_sats_unmodified_schema_and_the_loaded_one_agree_on_product_codes(csd):
    import random

    from sync.cfdi40 import sat_schema, sat_schema_file

    sat = etree.XMLSchema(etree.parse(str(sat_schema_file("4", "cfdv40.xsd"))))
    xml = build_xml(invoice([ticket("A-1", [iva16("10.00")])]), csd)
    xs = "{http://www.w3.org/2001/XMLSchema}"
    catalog = etree.parse(str(sat_schema_file("catalogos", "catCFDI.xsd"))).getroot()
    codes = [e.get("value") for e in catalog.find(f"{xs}simpleType[@name='c_ClaveProdServ']").iter(f"{xs}enumeration")]
    sample = random.Random(7).sample(codes, 40) + [codes[-1], "01010101", "99999999", "0101010", "010101011", " 01010101 ", "x"]
    verdicts = {}
    for code in sample:
        doc = etree.fromstring(xml.replace(b'ClaveProdServ="01010101"', f'ClaveProdServ="{code}"'.encode()))
        verdicts[code] = sat.validate(doc)
        assert sat_schema().validate(doc) == verdicts[code], code
    assert verdicts["01010101"] and verdicts[codes[-1]] and not verdicts["99999999"] and not verdicts["x"]
