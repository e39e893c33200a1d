"""The sandbox's local stamp: a schema-valid TFD 1.1 that says it is not real, spliced into
the CFDI without touching its bytes. Checked against SAT's own XSD and XSLT as shipped by
satcfdi."""
from __future__ import annotations

import base64
import copy
import hashlib
import os
import re
from datetime import datetime, timezone

import pytest

from sample_cfdi import FAKE_SELLO, comprobante, customer_cfdi, global_cfdi, with_other_pac_stamp, THREE_TICKETS

from sync.sandbox import (
    SANDBOX_LEYENDA,
    Stamp,
    is_sandbox_stamp,
    stamp_sandbox,
    tfd_cadena_original,
)

etree = pytest.importorskip("lxml.etree")
satcfdi = pytest.importorskip("satcfdi")

CFDI_NS = "http://www.sat.gob.mx/cfd/4"
TFD_NS = "http://www.sat.gob.mx/TimbreFiscalDigital"
NS = {"cfdi": CFDI_NS, "tfd": TFD_NS}
SAT_CFD = os.path.join(os.path.dirname(satcfdi.__file__), "transform", "schemas", "www.sat.gob.mx", "sitio_internet", "cfd")
TFD_XSD = os.path.join(SAT_CFD, "TimbreFiscalDigital", "TimbreFiscalDigitalv11.xsd")
TFD_XSLT = os.path.join(SAT_CFD, "TimbreFiscalDigital", "cadenaoriginal_TFD_1_1.xslt")
CFDI40_XSLT = os.path.join(SAT_CFD, "4", "cadenaoriginal_4_0", "cadenaoriginal_4_0.xslt")

NOW = datetime(2023, 3, 2, 9, 0, 7)
UUID = "0f8d2c1a-5b6e-4a7f-9c3d-2e1b0a9f8e7d"


def tfds(xml: bytes):
    return etree.fromstring(xml).findall("cfdi:Complemento/tfd:TimbreFiscalDigital", NS)


def the_tfd(xml: bytes):
    found = etree.fromstring(xml).findall(".//tfd:TimbreFiscalDigital", NS)
    assert len(found) == 1
    return found[0]


def test_stamp_adds_exactly_one_tfd_with_the_sandbox_attributes():
    xml = global_cfdi()
    stamp = stamp_sandbox(xml, now=NOW, uuid=UUID)

    assert isinstance(stamp, Stamp)
    assert stamp.uuid == UUID.upper()
    assert stamp.stamped_at == NOW and stamp.stamped_at.tzinfo is None
    assert stamp.production is False
    assert len(tfds(stamp.xml)) == 1
    tfd = the_tfd(stamp.xml)
    assert dict(tfd.attrib) == {
        "{http://www.w3.org/2001/XMLSchema-instance}schemaLocation": (
            "http://www.sat.gob.mx/TimbreFiscalDigital "
            "http://www.sat.gob.mx/sitio_internet/cfd/TimbreFiscalDigital/TimbreFiscalDigitalv11.xsd"
        ),
        "Version": "1.1",
        "UUID": UUID.upper(),
        "FechaTimbrado": "2023-03-02T09:00:07",
        "RfcProvCertif": "SPR190613I52",
        "Leyenda": "SANDBOX pos-ticket-agent: sin validez fiscal",
        "SelloCFD": FAKE_SELLO,
        "NoCertificadoSAT": "00000000000000000000",
        "SelloSAT": tfd.get("SelloSAT"),
    }
    assert tfd.prefix == "tfd"
    root = etree.fromstring(stamp.xml)
    assert root[-1].tag == f"{{{CFDI_NS}}}Complemento" and root[-1].prefix == "cfdi"


def test_uuid_is_a_random_upper_case_uuid4_and_now_is_mexico_city_wall_time():
    first = stamp_sandbox(global_cfdi())
    second = stamp_sandbox(global_cfdi())
    assert first.uuid != second.uuid
    assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}", first.uuid)
    assert the_tfd(first.xml).get("UUID") == first.uuid
    assert first.stamped_at.microsecond == 0 and first.stamped_at.tzinfo is None

    # 18:00 UTC on 15 January is noon in Mexico City (UTC-6, no DST since 2022).
    aware = stamp_sandbox(global_cfdi(), now=datetime(2024, 1, 15, 18, 0, 0, 123456, tzinfo=timezone.utc))
    assert aware.stamped_at == datetime(2024, 1, 15, 12, 0, 0)
    assert the_tfd(aware.xml).get("FechaTimbrado") == "2024-01-15T12:00:00"


def test_tfd_is_valid_against_sats_xsd():
    schema = etree.XMLSchema(etree.parse(TFD_XSD))
    for xml in (global_cfdi(), customer_cfdi()):
        tfd = the_tfd(stamp_sandbox(xml, now=NOW).xml)
        schema.assertValid(etree.ElementTree(copy.deepcopy(tfd)))


def test_sello_sat_is_the_sha256_of_the_cadena_sats_xslt_makes():
    transform = etree.XSLT(etree.parse(TFD_XSLT))
    tfd = the_tfd(stamp_sandbox(global_cfdi(), now=NOW, uuid=UUID).xml)
    cadena = str(transform(etree.ElementTree(copy.deepcopy(tfd))))

    assert cadena == (
        f"||1.1|{UUID.upper()}|2023-03-02T09:00:07|SPR190613I52|SANDBOX pos-ticket-agent: sin validez fiscal|"
        f"{FAKE_SELLO}|00000000000000000000||"
    )
    assert cadena == tfd_cadena_original(dict(tfd.attrib))
    assert tfd.get("SelloSAT") == base64.b64encode(hashlib.sha256(cadena.encode("utf-8")).digest()).decode()


@pytest.mark.parametrize(
    "kw, closing",
    [
        ({}, b"</cfdi:Comprobante>"),  # no Complemento: a new one, last child
        ({"addenda": "<x:Pedido xmlns:x='urn:x' Numero='77'/>"}, b"<cfdi:Addenda>"),  # before the Addenda
    ],
)
def test_original_bytes_are_kept_and_the_complemento_spliced_in(kw, closing):
    xml = global_cfdi(**kw)
    stamp = stamp_sandbox(xml, now=NOW)
    at = xml.rindex(closing)
    head, tail = xml[:at], xml[at:]

    assert stamp.xml.startswith(head) and stamp.xml.endswith(tail)
    inserted = stamp.xml[len(head) : len(stamp.xml) - len(tail)]
    assert inserted.startswith(b"<cfdi:Complemento><tfd:TimbreFiscalDigital ")
    assert inserted.endswith(b"/></cfdi:Complemento>")
    assert inserted.count(b"<") == 3


def test_an_existing_complemento_receives_the_tfd_after_its_complements():
    other = "<implocal:ImpuestosLocales xmlns:implocal='http://www.sat.gob.mx/implocal' version='1.0' TotaldeRetenciones='0.00' TotaldeTraslados='0.00'/>"
    xml = global_cfdi(complemento=other)
    stamp = stamp_sandbox(xml, now=NOW)
    at = xml.rindex(b"</cfdi:Complemento>")
    assert stamp.xml.startswith(xml[:at]) and stamp.xml.endswith(xml[at:])
    complemento = etree.fromstring(stamp.xml).find("cfdi:Complemento", NS)
    assert [etree.QName(e).localname for e in complemento] == ["ImpuestosLocales", "TimbreFiscalDigital"]

    empty = global_cfdi(complemento="")  # <cfdi:Complemento/>
    stamped = stamp_sandbox(empty, now=NOW).xml
    assert b"<cfdi:Complemento/>" in empty
    assert len(tfds(stamped)) == 1
    before, after = empty.split(b"<cfdi:Complemento/>")
    assert stamped.startswith(before + b"<cfdi:Complemento><tfd:") and stamped.endswith(b"</cfdi:Complemento>" + after)


def test_default_namespace_cfdi_gets_an_unprefixed_complemento():
    xml = global_cfdi().replace(b"xmlns:cfdi=", b"xmlns=").replace(b"<cfdi:", b"<").replace(b"</cfdi:", b"</")
    stamp = stamp_sandbox(xml, now=NOW)
    assert b"<Complemento><tfd:TimbreFiscalDigital " in stamp.xml
    assert len(tfds(stamp.xml)) == 1


def _cadena_cfdi(xml: bytes) -> str:
    return str(etree.XSLT(etree.parse(CFDI40_XSLT))(etree.fromstring(xml).getroottree()))


def test_the_emisors_sello_still_verifies_after_the_stamp():
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    unsigned = global_cfdi(sello="PLACEHOLDER")
    cadena = _cadena_cfdi(unsigned)
    assert cadena.startswith("||4.0|FG|1|2023-03-02T09:00:00|01|")
    sello = base64.b64encode(key.sign(cadena.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()
    signed = unsigned.replace(b'Sello="PLACEHOLDER"', f'Sello="{sello}"'.encode())

    stamped = stamp_sandbox(signed, now=NOW).xml
    assert _cadena_cfdi(stamped) == cadena
    root = etree.fromstring(stamped)
    key.public_key().verify(
        base64.b64decode(root.get("Sello")), _cadena_cfdi(stamped).encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
    )
    assert the_tfd(stamped).get("SelloCFD") == sello


@pytest.mark.parametrize(
    "xml, message",
    [
        (global_cfdi(sello=None), "no está sellado"),
        (global_cfdi(sello=""), "no está sellado"),
        (global_cfdi(sello="   "), "no está sellado"),
        (global_cfdi().replace(b'Version="4.0"', b'Version="3.3"'), "no es un CFDI 4.0"),
        (global_cfdi().replace(b"http://www.sat.gob.mx/cfd/4", b"http://www.sat.gob.mx/cfd/3"), "no es un CFDI 4.0"),
        (b"<cfdi:Comprobante xmlns:cfdi='http://www.sat.gob.mx/cfd/4' Version='4.0' Sello='abc'/>", "le falta"),
        (global_cfdi()[:-30], "no es XML"),
        (b"", "no es XML"),
        (global_cfdi().decode().replace('encoding="UTF-8"', 'encoding="ISO-8859-1"').encode("latin-1"), "UTF-8"),
    ],
    ids=["no-sello", "empty-sello", "blank-sello", "version-3.3", "cfd-3-namespace", "no-emisor", "truncated", "empty",
         "latin-1"],
)
def test_what_a_pac_would_refuse_is_refused(xml, message):
    with pytest.raises(ValueError, match=message):
        stamp_sandbox(xml, now=NOW)


def test_a_stamped_cfdi_is_not_stamped_again():
    stamped = stamp_sandbox(global_cfdi(), now=NOW).xml
    with pytest.raises(ValueError, match="ya está timbrado"):
        stamp_sandbox(stamped)
    with pytest.raises(ValueError, match="ya está timbrado"):
        stamp_sandbox(with_other_pac_stamp(global_cfdi()))


def test_a_bad_uuid_is_refused():
    with pytest.raises(ValueError, match="UUID"):
        stamp_sandbox(global_cfdi(), uuid="not-a-uuid")


def test_is_sandbox_stamp():
    xml = global_cfdi()
    assert is_sandbox_stamp(stamp_sandbox(xml).xml) is True
    assert is_sandbox_stamp(stamp_sandbox(customer_cfdi()).xml) is True
    assert is_sandbox_stamp(xml) is False  # not stamped at all
    assert is_sandbox_stamp(with_other_pac_stamp(xml)) is False  # a stamp that is not ours
    # Either mark alone is enough: the Leyenda, or the all-zero SAT certificate number.
    stamped = stamp_sandbox(xml).xml
    assert is_sandbox_stamp(stamped.replace(f' Leyenda="{SANDBOX_LEYENDA}"'.encode(), b"")) is True
    assert is_sandbox_stamp(stamped.replace(b'NoCertificadoSAT="00000000000000000000"', b'NoCertificadoSAT="30001000000500003456"')) is True
    with pytest.raises(ValueError):
        is_sandbox_stamp(b"not xml")


def test_large_global_cfdi_is_stamped():
    lines = THREE_TICKETS * 700
    xml = comprobante(lines, informacion_global={"Periodicidad": "04", "Meses": "02", "Año": "2024"})
    stamp = stamp_sandbox(xml, now=NOW)
    assert stamp.xml.startswith(xml[: xml.rindex(b"</cfdi:Comprobante>")])
    assert len(tfds(stamp.xml)) == 1
