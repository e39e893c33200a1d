"""The panel in a real headless Chromium against a real `ticket-agent serve`: log in,
find a ticket, reprint it, preview and build a global invoice."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import requests

from browser import click_and_wait, require_browser, screenshot, start_browser
from helpers import AUTH_A, BRANCH_A, KEY_A, dumps, free_port, start_server, stop_server, ticket_body, write_config

MEXICO = ZoneInfo("America/Mexico_City")


@pytest.fixture
def served(tmp_path):
    require_browser()
    port = free_port()
    config = write_config(tmp_path, port=port)
    proc = start_server(["--config", str(config)], tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    today = datetime.now(timezone.utc).astimezone(MEXICO) - timedelta(minutes=10)
    sales = [(f"P-{i}", total, today.strftime("%Y-%m-%dT%H:%M:%S")) for i, total in
             enumerate(["116.00", "58.00", "249.40", "12.36"], start=1)]
    sales += [("G-1", "116.00", "2026-11-20T10:00:00"), ("G-2", "58.00", "2026-11-20T18:30:00")]
    for number, total, fecha in sales:
        response = requests.put(f"{base}/{KEY_A}/tickets", data=dumps(ticket_body(number, total, fecha=fecha)),
                                headers={**AUTH_A, "Content-Type": "application/json"}, timeout=10)  # fmt: skip
        assert response.status_code == 200
    driver = start_browser(tmp_path / "chromium")
    yield driver, base, tmp_path
    driver.quit()
    stop_server(proc)


def test_log_in_find_reprint_and_build_a_global_invoice(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, base, folder = served
    wait = WebDriverWait(driver, 15)
    shots = folder / "screenshots"

    driver.get(base + "/")
    assert "/panel/entrar" in driver.current_url
    driver.find_element(By.ID, "usuario").send_keys("tepox")
    driver.find_element(By.ID, "contrasena").send_keys("mal")
    error = click_and_wait(driver, driver.find_element(By.ID, "entrar"), (By.ID, "login-error"))
    assert "Usuario o contraseña incorrectos." in error.text
    driver.find_element(By.ID, "usuario").clear()
    driver.find_element(By.ID, "usuario").send_keys("tepox")
    driver.find_element(By.ID, "contrasena").send_keys("tepox")
    centro = click_and_wait(driver, driver.find_element(By.ID, "entrar"), (By.ID, f"sucursal-{BRANCH_A}")).text
    assert "Tickets guardados 4 $435.76" in centro
    screenshot(driver, "panel-hoy", shots)

    click_and_wait(driver, driver.find_element(By.ID, "nav-tickets"), (By.ID, "numero")).send_keys("P-2")
    link = click_and_wait(driver, driver.find_element(By.ID, "buscar-boton"), (By.LINK_TEXT, "P-2"))
    title = click_and_wait(driver, link, (By.ID, "estado-ticket"))
    assert "Ticket P-2" in driver.find_element(By.TAG_NAME, "h1").text and title.text == "Almacenado"
    assert "$58.00" in driver.page_source
    flash = click_and_wait(driver, driver.find_element(By.ID, "reimprimir"), (By.CLASS_NAME, "flash"))
    assert "Reimpresión del ticket P-2 enviada" in flash.text
    # the real print worker prints it: a second slip of P-2 lands in the branch's folder
    WebDriverWait(driver, 15).until(lambda _: len(list((folder / "prints").glob(f"{BRANCH_A}_P-2_*.bin"))) == 2)
    driver.refresh()
    wait.until(lambda d: d.page_source.count("Reimpresión: impresa") == 1)
    screenshot(driver, "panel-ticket", shots)

    day = click_and_wait(driver, driver.find_element(By.ID, "nav-globales"), (By.ID, "global-fecha"))
    driver.execute_script("arguments[0].value = '2026-11-20'", day)
    parts = click_and_wait(driver, driver.find_element(By.ID, "vista-previa"), (By.ID, "partes")).text
    assert "1 2 $150.00 $0.00 $24.00 $174.00 01" in parts
    screenshot(driver, "panel-vista-previa", shots)
    flash = click_and_wait(driver, driver.find_element(By.ID, "emitir"), (By.CLASS_NAME, "flash"))
    assert "Factura global FG-1 timbrada: 2 tickets." in flash.text
    row = driver.find_element(By.ID, "globales").find_element(By.TAG_NAME, "tbody").text
    assert "2026-11-20" in row and "FG-1" in row and "Timbrada" in row and "$174.00" in row
    screenshot(driver, "panel-globales", shots)

    # and on a phone-sized screen the page still fits
    driver.set_window_size(390, 844)
    click_and_wait(driver, driver.find_element(By.ID, "nav-hoy"), (By.ID, "salud"))
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 390
    screenshot(driver, "panel-hoy-telefono", shots)
