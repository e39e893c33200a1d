"""GET /{key}/descargasCfdi: the XML, the PDF or both in a zip, and nothing else."""
from __future__ import annotations

import io
import zipfile

import pytest

from helpers import AUTH_A, AUTH_B, KEY_A, KEY_B, put_json, ticket_body
from helpers_cfdi import PDF, XML, attach_customer_cfdi

pytestmark = pytest.mark.both_databases  # tests/postgres.py

URL = f"/{KEY_A}/descargasCfdi"


@pytest.fixture
def cfdi(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("D1"))
    return attach_customer_cfdi(store, "D1")


def download(client, **params):
    return client.get(URL, query_string=params, headers=AUTH_A)


def test_xml(client, cfdi):
    response = download(client, idCfdi=cfdi.id, produccion="false", representacion="XML")
    assert response.status_code == 200
    assert response.mimetype == "application/xml"
    assert response.data == XML
    assert response.headers["Content-Disposition"] == f'attachment; filename="{cfdi.uuid}.xml"'


def test_pdf(client, cfdi):
    response = download(client, idCfdi=cfdi.id, produccion="false", representacion="PDF")
    assert (response.status_code, response.mimetype, response.data) == (200, "application/pdf", PDF)


def test_xml_and_pdf_in_a_zip(client, cfdi):
    response = download(client, idCfdi=cfdi.id, produccion="false", representacion="XML_PDF")
    assert response.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert sorted(archive.namelist()) == [f"{cfdi.uuid}.pdf", f"{cfdi.uuid}.xml"]
    assert archive.read(f"{cfdi.uuid}.xml") == XML


def test_unknown_id_is_a_404(client, cfdi):
    response = download(client, idCfdi="0" * 32, representacion="XML")
    assert response.status_code == 404
    assert response.get_data(as_text=True) == f"No existe el CFDI con idCfdi {'0' * 32}."


@pytest.mark.parametrize("cfdi_id", ["../tickets.db", "..%2F..%2Ftickets.db", "", "x" * 32, "/etc/passwd"])
def test_path_tricks_find_nothing(client, cfdi, cfdi_id):
    response = download(client, idCfdi=cfdi_id, representacion="XML")
    assert response.status_code == 404
    assert b"SQLite" not in response.data


def test_production_flag_must_match(client, cfdi):
    assert download(client, idCfdi=cfdi.id, produccion="true", representacion="XML").status_code == 404


def test_bad_parameters_are_named(client, cfdi):
    response = download(client, idCfdi=cfdi.id, representacion="HTML")
    assert (response.status_code, response.get_data(as_text=True)) == (
        400, 'representacion: debe ser XML, PDF o XML_PDF (se recibió "HTML")'
    )
    response = download(client, idCfdi=cfdi.id, produccion="si")
    assert response.get_data(as_text=True) == 'produccion: debe ser true o false (se recibió "si")'


def test_a_cfdi_without_pdf(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("D2"))
    cfdi = attach_customer_cfdi(store, "D2", pdf=False)
    response = download(client, idCfdi=cfdi.id, representacion="PDF")
    assert (response.status_code, response.get_data(as_text=True)) == (404, f"El CFDI {cfdi.id} no tiene PDF.")
    archive = zipfile.ZipFile(io.BytesIO(download(client, idCfdi=cfdi.id, representacion="XML_PDF").data))
    assert archive.namelist() == [f"{cfdi.uuid}.xml"]


def test_another_company_cannot_download_it(client, cfdi):
    # Company B's own key and credentials, asking for company A's CFDI id.
    response = client.get(f"/{KEY_B}/descargasCfdi", query_string={"idCfdi": cfdi.id, "representacion": "XML"},
                          headers=AUTH_B)
    assert response.status_code == 404
    assert response.data != XML
