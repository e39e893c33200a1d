"""The customer's CFDI 4.0 the self-invoice page issues: what a PAC, SAT's schema and the
customer's accountant check in it, and the SAT catalogs behind the page's choices."""
from __future__ import annotations

import base64
import copy
import io
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import lxml.html
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from helpers import BRANCH_A, KEY_A, put_json, ticket_body, write_config

from agent.app import create_app
from agent.config import load_config
from agent.insumo import parse_insumo
from agent.self_invoice import CLOCK
from sync import sat_catalogs
from sync.cfdi40 import Issuer, _sat_xslt, cadena_original, sat_schema_file, validate
from sync.csd import load_csd
from sync.customer_cfdi import CannotInvoice, Customer, CustomerInvoice, build_xml, totals
from sync.sandbox import SANDBOX_LEYENDA
from sync.sandbox_csd import sandbox_csd_files

pytestmark = pytest.mark.both_databases  # tests/postgres.py

pypdf = pytest.importorskip("pypdf")

MEXICO = ZoneInfo("America/Mexico_City")
NS = {"cfdi": "http://www.sat.gob.mx/cfd/4", "tfd": "http://www.sat.gob.mx/TimbreFiscalDigital"}
DOCS = Path(__file__).resolve().parent.parent / "docs"
ISSUER = Issuer("EKU9003173C9", "ESCUELA KEMPER URGATE", "601")
CUSTOMER = Customer("PECM800101AB1", "MARÍA JOSÉ PEÑA & CASTAÑEDA", "06600", "612", "G03")
NOW = datetime(2026, 11, 20, 15, 0, 7)


@pytest.fixture(scope="module")
def csd(tmp_path_factory):
    cer, key, password = sandbox_csd_files(tmp_path_factory.mktemp("csd"), ISSUER.rfc, ISSUER.name)
    return load_csd(cer, key, password, expected_rfc=ISSUER.rfc)


def insumo_example(n: int):
    """The n-th example of docs/insumo.md, parsed (the docs and the parser agree on them)."""
    return parse_insumo(re.findall(r"```insumo\n(.*?)```", (DOCS / "insumo.md").read_text("utf-8"), re.S)[n])


def invoice_of(insumo, **kw) -> CustomerInvoice:
    values = dict(issuer=ISSUER, customer=CUSTOMER, series=insumo.series or "", folio=insumo.folio or "T1",
                  issued_at=NOW, postal_code="68050", insumo=insumo)  # fmt: skip
    values.update(kw)
    return CustomerInvoice(**values)


def sat_cadena(xml: bytes) -> str:
    return str(_sat_xslt()(etree.fromstring(xml).getroottree()))


def seal_verifies(xml: bytes) -> bool:
    root = etree.fromstring(xml)
    certificate = x509.load_der_x509_certificate(base64.b64decode(root.get("Certificado")))
    try:
        certificate.public_key().verify(base64.b64decode(root.get("Sello")), sat_cadena(xml).encode("utf-8"),
                                        padding.PKCS1v15(), hashes.SHA256())  # fmt: skip
    except Exception:  # noqa: BLE001 - any failure means the seal does not verify
        return False
    return True


def attrs(root, path: str) -> list[dict]:
    return [dict(e.attrib) for e in root.xpath(path, namespaces=NS)]


# -- the CFDI a customer downloads -------------------------------------------------------


@pytest.fixture
def issued(tmp_path):
    """A ticket invoiced through the page: (page, xml, pdf, agent)."""
    path = write_config(tmp_path)
    app = create_app(load_config(path))
    app.config[CLOCK] = lambda: datetime(2026, 11, 20, 15, 0, 7, tzinfo=MEXICO)
    client = app.test_client()
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("12A31", "116.00")).status_code == 200
    response = client.post(f"/autofactura/{KEY_A}/{BRANCH_A}/12A31", data={
        "rfc": "PECM800101AB1", "nombre": "maría josé peña & castañeda", "codigo_postal": "06600",
        "regimen": "612", "uso": "G03", "monto": "116.00",
    })  # fmt: skip
    assert response.status_code == 200, response.get_data(as_text=True)
    page = lxml.html.fromstring(response.get_data(as_text=True))
    xml = client.get(page.get_element_by_id("descargar-xml").get("href")).data
    pdf = client.get(page.get_element_by_id("descargar-pdf").get("href")).data
    yield page, xml, pdf, app.config["AGENT"]
    app.config["AGENT"].close()


def test_the_customers_xml_is_valid_sealed_and_stamped_by_the_sandbox(issued):
    page, xml, _, agent = issued
    root = etree.fromstring(xml)
    # SAT's schema has no declaration for the TFD: validate what was signed, then the TFD.
    unstamped = copy.deepcopy(root)
    unstamped.remove(unstamped.find("cfdi:Complemento", NS))
    validate(etree.tostring(unstamped, xml_declaration=True, encoding="UTF-8"))
    [tfd] = root.findall("cfdi:Complemento/tfd:TimbreFiscalDigital", NS)
    tfd_schema = etree.XMLSchema(etree.parse(str(sat_schema_file("TimbreFiscalDigital", "TimbreFiscalDigitalv11.xsd"))))
    tfd_schema.assertValid(etree.ElementTree(copy.deepcopy(tfd)))
    assert tfd.get("UUID") == page.get_element_by_id("uuid").text_content().strip()
    assert tfd.get("Leyenda") == SANDBOX_LEYENDA and tfd.get("SelloCFD") == root.get("Sello")
    assert seal_verifies(xml)
    # Signed with the company's sandbox test CSD, made once under the data directory.
    sandbox_cer = (agent.data_dir / "sandbox-csd" / "EKU9003173C9.cer").read_bytes()
    assert base64.b64decode(root.get("Certificado")) == sandbox_cer


def test_the_customers_xml_says_who_bought_what_and_how_it_was_paid(issued):
    _, xml, _, _ = issued
    root = etree.fromstring(xml)
    assert attrs(root, "cfdi:Receptor") == [{
        "Rfc": "PECM800101AB1", "Nombre": "MARÍA JOSÉ PEÑA & CASTAÑEDA", "DomicilioFiscalReceptor": "06600",
        "RegimenFiscalReceptor": "612", "UsoCFDI": "G03",
    }]  # fmt: skip
    assert attrs(root, "cfdi:Emisor") == [{"Rfc": "EKU9003173C9", "Nombre": "ESCUELA KEMPER URGATE",
                                           "RegimenFiscal": "601"}]  # fmt: skip
    head = dict(root.attrib)
    assert {k: head[k] for k in ("Serie", "Folio", "Fecha", "FormaPago", "MetodoPago", "TipoDeComprobante",
                                 "Exportacion", "Moneda", "SubTotal", "Total", "LugarExpedicion")} == {
        "Serie": "A", "Folio": "1",  # the insumo's own Serie and Folio
        "Fecha": "2026-11-20T15:00:07", "FormaPago": "01", "MetodoPago": "PUE", "TipoDeComprobante": "I",
        "Exportacion": "01", "Moneda": "MXN", "SubTotal": "100.00", "Total": "116.00",
        "LugarExpedicion": "68050",  # the branch's postal code
    }  # fmt: skip
    assert "InformacionGlobal" not in xml.decode()
    [concept] = attrs(root, "cfdi:Conceptos/cfdi:Concepto")
    assert (concept["NoIdentificacion"], concept["Descripcion"], concept["Importe"]) == (
        "SKU-1", "Venta de mostrador", "100.00")
    assert attrs(root, "cfdi:Conceptos/cfdi:Concepto/cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado") == [
        {"Base": "100.00", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.160000", "Importe": "16.00"}]


def test_the_customers_pdf_shows_the_uuid_and_the_customer(issued):
    page, _, pdf, _ = issued
    text = " ".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    uuid = page.get_element_by_id("uuid").text_content().strip()
    for expected in (uuid, "PECM800101AB1", "MARÍA JOSÉ PEÑA & CASTAÑEDA", "612 Personas Físicas",
                     "G03 Gastos en general", "FACTURA", "SANDBOX", "116.00"):  # fmt: skip
        assert expected in text, expected
    assert "FACTURA GLOBAL" not in text


# -- built from any ticket ---------------------------------------------------------------


def test_every_item_keeps_its_own_taxes_and_the_summary_rounds_per_rate(csd):
    insumo = insumo_example(1)  # IVA 16 % / 0 % / exento, IEPS, discounts
    xml = build_xml(invoice_of(insumo), csd)
    validate(xml)
    root = etree.fromstring(xml)
    assert (root.get("SubTotal"), root.get("Descuento"), root.get("Total")) == ("182.00", "7.00", "191.96")
    concepts = attrs(root, "cfdi:Conceptos/cfdi:Concepto")
    assert [(c["NoIdentificacion"], c["Cantidad"], c.get("Descuento"), c.get("Unidad")) for c in concepts] == [
        ("JAB-150", "2", "3.00", "Pieza"), ("LECHE-1L", "2.000", None, "Litro"),
        ("REV-0425", "1", None, None), ("PAPAS-45", "3", "4.00", "Pieza")]  # fmt: skip
    chips = root.xpath("cfdi:Conceptos/cfdi:Concepto[4]/cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado", namespaces=NS)
    assert [(t.get("Impuesto"), t.get("Base"), t.get("Importe")) for t in chips] == [
        ("003", "50.00", "4.00"), ("002", "54.00", "8.64")]
    summary = attrs(root, "cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado")
    assert summary == [
        {"Base": "81.00", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.160000", "Importe": "12.96"},
        {"Base": "53.00", "Impuesto": "002", "TipoFactor": "Tasa", "TasaOCuota": "0.000000", "Importe": "0.00"},
        {"Base": "45.00", "Impuesto": "002", "TipoFactor": "Exento"},
        {"Base": "50.00", "Impuesto": "003", "TipoFactor": "Tasa", "TasaOCuota": "0.080000", "Importe": "4.00"},
    ]
    assert root.find("cfdi:Impuestos", NS).get("TotalImpuestosTrasladados") == "16.96"
    assert totals(invoice_of(insumo)).iva == Decimal("12.96")
    # Our cadena is SAT's, and the seal is over it.
    assert cadena_original(xml) == sat_cadena(xml)
    assert seal_verifies(xml)


def test_a_tampered_total_no_longer_verifies(csd):
    xml = build_xml(invoice_of(insumo_example(0)), csd)
    assert seal_verifies(xml)
    assert not seal_verifies(xml.replace(b'Total="12.36"', b'Total="1.36"'))


def test_an_item_discounted_to_nothing_carries_no_tax(csd):
    insumo = parse_insumo("\n".join([
        "00|CFD33BASE|QA|4.0|",
        "01|||2026-11-20T11:00:00|04|MXN||30.00|10.00|23.20|68050|",
        "02|01010101|REGALO|1|H87||Regalo promocional|10.00|10.00|10.00|02|",
        "03|002|Tasa|0.160000|0.00|0.00|",
        "02|01010101|TAZA|1|H87||Taza|20.00|20.00||02|",
        "03|002|Tasa|0.160000|20.00|3.20|",
    ]))  # fmt: skip
    xml = build_xml(invoice_of(insumo, series="", folio="T9"), csd)
    validate(xml)
    root = etree.fromstring(xml)
    gift, cup = root.findall("cfdi:Conceptos/cfdi:Concepto", NS)
    assert gift.get("ObjetoImp") == "01" and gift.find("cfdi:Impuestos", NS) is None
    assert cup.get("ObjetoImp") == "02"
    assert "Serie" not in root.attrib and root.get("Folio") == "T9"
    assert (root.get("Total"), root.get("FormaPago")) == ("23.20", "04")


def test_an_only_exempt_ticket_has_no_total_of_transferred_taxes(csd):
    insumo = parse_insumo("\n".join([
        "00|CFD33BASE|QA|4.0|",
        "01|R|77|2026-11-20T11:00:00|01|MXN||45.00|0.00|45.00|68050|",
        "02|55101506|REV-0425|1|H87||Revista mensual|45.00|45.00|0.00|02|",
        "03|002|Exento||45.00||",
    ]))  # fmt: skip
    xml = build_xml(invoice_of(insumo), csd)
    validate(xml)
    summary = etree.fromstring(xml).find("cfdi:Impuestos", NS)
    assert summary.get("TotalImpuestosTrasladados") is None
    assert attrs(summary, "cfdi:Traslados/cfdi:Traslado") == [{"Base": "45.00", "Impuesto": "002",
                                                               "TipoFactor": "Exento"}]  # fmt: skip


def test_a_ticket_paid_por_definir_cannot_be_invoiced_pue(csd):
    insumo = parse_insumo(insumo_example(0).raw.replace("|01|MXN|", "|99|MXN|"))
    with pytest.raises(CannotInvoice, match="forma de pago"):
        build_xml(invoice_of(insumo), csd)


def test_a_csd_of_another_rfc_is_refused(csd):
    with pytest.raises(ValueError, match="belongs to RFC EKU9003173C9"):
        build_xml(invoice_of(insumo_example(0), issuer=Issuer("XIA190128J61", "XENON INDUSTRIAL ARTICLES", "601")), csd)


# -- the catalogs behind the form --------------------------------------------------------


def xsd_enumeration(name: str) -> set[str]:
    catalog = etree.parse(str(sat_schema_file("catalogos", "catCFDI.xsd")))
    path = f"//xs:simpleType[@name='{name}']//xs:enumeration/@value"
    return set(catalog.xpath(path, namespaces={"xs": "http://www.w3.org/2001/XMLSchema"}))


def test_every_regime_and_use_offered_is_in_sats_catalogs_with_its_name():
    keys = sat_catalogs.catalog_keys()
    for catalog, codes in keys.items():
        assert codes <= xsd_enumeration(catalog), catalog
    assert all(name for _, name in sat_catalogs.regimes()) and all(name for _, name in sat_catalogs.uses())
    assert dict(sat_catalogs.regimes())["626"] == "Régimen Simplificado de Confianza"
    assert dict(sat_catalogs.uses())["G03"] == "Gastos en general"
    # Payment and payroll uses never go on an invoice of a sale.
    assert not {"CP01", "CN01", "P01"} & {code for code, _ in sat_catalogs.uses()}


def test_every_offered_regime_can_choose_some_use():
    for code, _ in sat_catalogs.regimes():
        for person in (sat_catalogs.FISICA, sat_catalogs.MORAL):
            if sat_catalogs.regime_allows(code, person):
                assert sat_catalogs.uses_for(code, person), (code, person)


@pytest.mark.parametrize(
    "regime, person, uses",
    [
        ("616", sat_catalogs.FISICA, ["S01"]),
        ("605", sat_catalogs.FISICA, [f"D{n:02d}" for n in range(1, 11)] + ["S01"]),
        ("626", sat_catalogs.MORAL, ["G01", "G02", "G03"] + [f"I0{n}" for n in range(1, 9)] + ["S01"]),
        ("612", sat_catalogs.FISICA, ["G01", "G02", "G03"] + [f"I0{n}" for n in range(1, 9)]
         + [f"D{n:02d}" for n in range(1, 11)] + ["S01"]),
    ],
)  # fmt: skip
def test_sats_use_matrix(regime, person, uses):
    assert sat_catalogs.uses_for(regime, person) == uses


def test_regimes_follow_the_rfcs_person_type():
    assert sat_catalogs.person_of("EKU9003173C9") == sat_catalogs.MORAL
    assert sat_catalogs.person_of("GODE561231GR8") == sat_catalogs.FISICA
    assert sat_catalogs.regime_allows("601", sat_catalogs.MORAL) and not sat_catalogs.regime_allows("601", sat_catalogs.FISICA)
    assert sat_catalogs.regime_allows("612", sat_catalogs.FISICA) and not sat_catalogs.regime_allows("612", sat_catalogs.MORAL)
    assert sat_catalogs.regime_allows("626", sat_catalogs.FISICA) and sat_catalogs.regime_allows("626", sat_catalogs.MORAL)
    assert sat_catalogs.postal_code_exists("68050") and not sat_catalogs.postal_code_exists("00001")
