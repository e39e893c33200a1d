"""A customer's walk in a real headless Chromium: from the QR printed on the slip to the
sandbox self-invoice page, the form, the stamped CFDI and its downloaded XML; then the
POS finds that CFDI through GET /cfdis."""
from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import requests
import zxingcpp
from PIL import Image

from browser import click_and_wait, require_browser, screenshot, start_browser
from helpers import AUTH_A, BRANCH_A, KEY_A, dumps, free_port, start_server, stop_server, ticket_body, write_config

MEXICO = ZoneInfo("America/Mexico_City")


@pytest.fixture
def served(tmp_path):
    require_browser()
    port = free_port()
    config = write_config(tmp_path, port=port)
    base = f"http://127.0.0.1:{port}"
    text = config.read_text(encoding="utf-8").replace(
        'portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}"\n',
        f'portal_url = "{base}/autofactura/{{company}}/{{branch}}/{{ticket}}"\nurl_secret = "s3cret-del-portal"\n', 1)
    config.write_text(text, encoding="utf-8")
    proc = start_server(["--config", str(config)], tmp_path, port)
    driver = start_browser(tmp_path / "chromium", width=430, height=932)  # a phone: that is what scans QRs
    yield driver, base, tmp_path
    driver.quit()
    stop_server(proc)


def test_from_the_qr_to_the_downloaded_cfdi(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver, base, folder = served
    sold = (datetime.now(timezone.utc).astimezone(MEXICO) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S")
    auth = {**AUTH_A, "Content-Type": "application/json"}
    response = requests.put(f"{base}/{KEY_A}/tickets", data=dumps(ticket_body("Q-77", "249.40", fecha=sold)),
                            headers=auth, timeout=10)  # fmt: skip
    assert response.status_code == 200

    # the QR of the ticket's slip, read by a real decoder, is where the customer goes
    slip = requests.get(f"{base}/{KEY_A}/tickets/{BRANCH_A}/Q-77/recibo", params={"formato": "png"}, headers=AUTH_A,
                        timeout=10)  # fmt: skip
    [code] = zxingcpp.read_barcodes(Image.open(io.BytesIO(slip.content)).convert("L"))
    url = code.text
    assert url.startswith(f"{base}/autofactura/{KEY_A}/{BRANCH_A}/Q-77?firma=")

    driver.get(url)
    assert "Q-77" in driver.page_source and "$249.40" in driver.page_source
    driver.find_element(By.ID, "rfc").send_keys("PECM800101AB1")
    driver.find_element(By.ID, "nombre").send_keys("María José Peña Castañeda")
    driver.find_element(By.ID, "codigo_postal").send_keys("06600")
    Select(driver.find_element(By.ID, "regimen")).select_by_value("612")
    Select(driver.find_element(By.ID, "uso")).select_by_value("S01")
    screenshot(driver, "autofactura-formulario", folder / "screenshots")
    uuid = click_and_wait(driver, driver.find_element(By.ID, "facturar"), (By.ID, "uuid")).text
    assert len(uuid) == 36
    assert driver.find_element(By.ID, "rfc-receptor").text == "PECM800101AB1"
    screenshot(driver, "autofactura-lista", folder / "screenshots")

    driver.find_element(By.ID, "descargar-xml").click()
    downloads = folder / "chromium" / "downloads"
    WebDriverWait(driver, 15).until(lambda _: (downloads / f"{uuid}.xml").is_file())
    xml = (downloads / f"{uuid}.xml").read_text(encoding="utf-8")
    assert uuid in xml and 'Rfc="PECM800101AB1"' in xml

    listed = requests.get(f"{base}/{KEY_A}/cfdis", params={"ticket": "Q-77", "sucursal": BRANCH_A}, headers=AUTH_A,
                          timeout=10)  # fmt: skip
    [row] = json.loads(listed.text)["cfdis"]
    assert (row["uuid"], row["rfc"]) == (uuid, "PECM800101AB1")
