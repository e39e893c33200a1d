"""The factura global end to end in the agent: closed periods become exactly one stamped,
recorded global CFDI per ticket, whatever runs twice or dies half way."""
from __future__ import annotations

import io
import json
import threading
import zipfile
from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from lxml import etree

from helpers import AUTH_A, BRANCH_A, BRANCH_A2, KEY_A, put_json, ticket_body
from helpers import LocalClock as Clock

from agent.models import Cfdi, GlobalInvoice, Ticket
from service.background import global_invoicing
from sync.expiry import expire_overdue
from sync.sandbox import is_sandbox_stamp

pytestmark = pytest.mark.both_databases  # tests/postgres.py

MEXICO = ZoneInfo("America/Mexico_City")
NS = {"cfdi": "http://www.sat.gob.mx/cfd/4"}


@pytest.fixture
def invoicing(agent):
    invoicing = global_invoicing(agent)
    invoicing.clock = Clock("2026-11-21T00:05:00")
    return invoicing


def sell(client, number, total, fecha="2026-11-20T12:00:00", branch=BRANCH_A):
    response = put_json(client, f"/{KEY_A}/tickets", ticket_body(number, total, branch=branch, fecha=fecha))
    assert response.status_code == 200, response.get_data(as_text=True)


def close_day(agent, invoicing):
    expire_overdue(agent.store, agent.config, invoicing.clock())
    return invoicing.run()


def global_xml(agent, number):
    ticket = agent.store.ticket(KEY_A, BRANCH_A, number)
    return (agent.data_dir / Cfdi.get_by_id(ticket.cfdi_id).xml_file).read_bytes()


def test_sats_worked_example_through_the_whole_flow(client, agent, invoicing):
    # Subtotals 130.00, 359.98, 355.00 at IVA 16%: tickets of 150.80, 417.58, 411.80.
    for number, total in (("T1", "150.80"), ("T2", "417.58"), ("T3", "411.80")):
        sell(client, number, total)
    [run] = close_day(agent, invoicing)
    assert (run.state, run.tickets, run.series, run.folio) == ("stamped", 3, "FG", 1)
    root = etree.fromstring(global_xml(agent, "T1"))
    assert (root.get("SubTotal"), root.get("Total"), root.get("Serie"), root.get("Folio")) == (
        "844.98", "980.18", "FG", "1"
    )
    assert root.find("cfdi:Impuestos", NS).get("TotalImpuestosTrasladados") == "135.20"
    info = root.find("cfdi:InformacionGlobal", NS)
    assert (info.get("Periodicidad"), info.get("Meses"), info.get("Año")) == ("01", "11", "2026")
    receptor = root.find("cfdi:Receptor", NS)
    assert (receptor.get("Rfc"), receptor.get("Nombre"), receptor.get("DomicilioFiscalReceptor")) == (
        "XAXX010101000", "PUBLICO EN GENERAL", "68050"
    )
    assert [c.get("NoIdentificacion") for c in root.find("cfdi:Conceptos", NS)] == ["T1", "T2", "T3"]
    assert is_sandbox_stamp(global_xml(agent, "T1"))
    assert {agent.store.ticket(KEY_A, BRANCH_A, n).status for n in ("T1", "T2", "T3")} == {"GLOBAL"}


def test_get_cfdis_and_the_downloads_answer_for_a_ticket_in_the_global(client, agent, invoicing):
    sell(client, "W1", "116.00")
    close_day(agent, invoicing)
    [row] = json.loads(client.get(f"/{KEY_A}/cfdis?ticket=W1", headers=AUTH_A).get_data(as_text=True))["cfdis"]
    assert (row["rfc"], row["razonSocial"], row["produccion"], row["monto"]) == (
        "XAXX010101000", "PUBLICO EN GENERAL", "false", "116.000000"
    )
    assert (row["serie"], row["folio"], row["iva"], row["tienePDF"]) == ("FG", "1", "16.000000", "true")
    archive = zipfile.ZipFile(io.BytesIO(client.get(row["pdfAndXmlDownload"].replace("http://localhost", ""),
                                                    headers=AUTH_A).data))
    assert sorted(archive.namelist()) == sorted([f"{row['uuid']}.xml", f"{row['uuid']}.pdf"])
    assert archive.read(f"{row['uuid']}.pdf").startswith(b"%PDF")


def test_nothing_before_the_period_closes_and_nothing_new_after(client, agent, invoicing):
    sell(client, "N1", "50.00")
    store = agent.store
    store.expire_ticket(KEY_A, BRANCH_A, "N1", "expired by the POS (PUT /expired)")
    invoicing.clock = Clock("2026-11-20T23:59:00")
    assert invoicing.run() == []  # the day is not over in Mexico City
    invoicing.clock = Clock("2026-11-21T00:01:00")
    assert len(invoicing.run()) == 1
    assert invoicing.run() == []  # re-running a closed period produces nothing new
    assert GlobalInvoice.select().count() == 1
    assert Cfdi.select().count() == 1


def test_a_late_ticket_of_a_closed_period_gets_its_own_part(client, agent, invoicing):
    sell(client, "L1", "50.00")
    close_day(agent, invoicing)
    sell(client, "L2", "60.00")  # the POS was offline: yesterday's sale arrives today
    runs = close_day(agent, invoicing)
    assert [(r.part, r.folio, r.tickets) for r in runs] == [(2, 2, 1)]


def test_a_ticket_invoiced_by_its_customer_stays_out_of_the_global(client, agent, invoicing):
    from helpers_cfdi import attach_customer_cfdi

    sell(client, "C1", "50.00")
    sell(client, "C2", "70.00")
    attach_customer_cfdi(agent.store, "C2")  # invoiced at 23:59, while the day closes
    [run] = close_day(agent, invoicing)
    root = etree.fromstring(global_xml(agent, "C1"))
    assert [c.get("NoIdentificacion") for c in root.find("cfdi:Conceptos", NS)] == ["C1"]
    assert agent.store.ticket(KEY_A, BRANCH_A, "C2").status == "FACTURADO"


def test_each_branch_and_series_has_its_own_global(client, agent, invoicing):
    sell(client, "B1", "50.00", branch=BRANCH_A)
    sell(client, "B1", "50.00", branch=BRANCH_A2)
    runs = close_day(agent, invoicing)
    assert sorted((r.branch, r.series, r.folio) for r in runs) == [(BRANCH_A2, "FN", 1), (BRANCH_A, "FG", 1)]


def test_a_period_over_the_cap_is_split_with_consecutive_folios(client, agent, invoicing, monkeypatch):
    from sync import cfdi40

    real_split = cfdi40.split
    monkeypatch.setattr(cfdi40, "split", lambda tickets, **kw: real_split(tickets, max_concepts=2))
    for n in range(5):
        sell(client, f"S{n}", "10.00")
    runs = close_day(agent, invoicing)
    assert [(r.part, r.folio, r.tickets) for r in runs] == [(1, 1, 2), (2, 2, 2), (3, 3, 1)]
    assert Ticket.select().where(Ticket.status == "GLOBAL").count() == 5


def test_killed_between_signing_and_recording_the_next_round_finishes_once(client, agent, invoicing, monkeypatch):
    for n in range(3):
        sell(client, f"K{n}", "10.00")

    class Killed(BaseException):
        """Not an Exception: like SIGKILL, nothing gets to mark the run failed."""

    real_record = agent.global_runs.record

    def die(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(agent.global_runs, "record", die)
    with pytest.raises(Killed):
        close_day(agent, invoicing)
    assert Cfdi.select().count() == 0
    assert GlobalInvoice.get().state == "reserved"
    monkeypatch.setattr(agent.global_runs, "record", real_record)
    [run] = invoicing.run()  # the restarted agent's first sweep
    assert run.state == "stamped"
    assert Cfdi.select().count() == 1
    assert GlobalInvoice.select().count() == 1
    assert invoicing.run() == []


def test_two_sweeps_at_once_issue_one_cfdi(client, agent, invoicing):
    for n in range(20):
        sell(client, f"P{n}", "10.00")
    expire_overdue(agent.store, agent.config, invoicing.clock())
    errors = []

    def sweep():
        try:
            invoicing.run()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert Cfdi.select().count() == 1
    assert Ticket.select().where(Ticket.status == "GLOBAL").count() == 20


def test_a_failure_is_kept_with_its_reason_and_retried_later(client, agent, invoicing):
    sell(client, "F1", "10.00")

    class DownUpstream:
        kind = "sandbox"

        def stamp(self, xml, *, key):
            raise RuntimeError("el PAC no responde")

    real = invoicing.upstream
    invoicing.upstream = DownUpstream()
    [error] = close_day(agent, invoicing)
    run = GlobalInvoice.get()
    assert (run.state, run.last_error, run.attempts) == ("failed", "el PAC no responde", 1)
    assert agent.store.ticket(KEY_A, BRANCH_A, "F1").global_invoice == run.id  # still reserved for it
    invoicing.upstream = real
    assert invoicing.run() == []  # not yet: it waits for its retry time
    invoicing.clock = Clock("2026-11-21T00:07:00")
    [done] = invoicing.run()
    assert (done.state, done.folio) == ("stamped", 1)  # same folio, no gap


def test_dry_run_reserves_nothing(client, agent, invoicing):
    from agent.periods import period_of

    sell(client, "D1", "116.00")
    expire_overdue(agent.store, agent.config, invoicing.clock())
    company = agent.config.company(KEY_A)
    [preview] = invoicing.preview(company, company.branch(BRANCH_A), period_of(datetime(2026, 11, 20).date(), "day"))
    assert (preview.totals.subtotal, preview.totals.total) == (Decimal("100.00"), Decimal("116.00"))
    assert b"D1" in preview.xml
    assert GlobalInvoice.select().count() == 0


def test_the_cli_issues_a_closed_period(tmp_path, config_path):
    from click.testing import CliRunner

    from agent.app import create_app
    from agent.config import load_config
    from service.cli import cli

    app = create_app(load_config(config_path))
    client = app.test_client()
    sell(client, "X1", "116.00", fecha="2026-11-19T10:00:00")
    app.config["AGENT"].close()
    runner = CliRunner()
    preview = runner.invoke(cli, ["global-invoice", "--config", str(config_path), "--branch", BRANCH_A,
                                  "--period", "2026-11-19", "--dry-run"])
    assert preview.exit_code == 0, preview.output
    assert "Total 116.00" in preview.output
    result = runner.invoke(cli, ["global-invoice", "--config", str(config_path), "--branch", BRANCH_A,
                                 "--period", "2026-11-19"])
    assert result.exit_code == 0, result.output
    assert "FG-1: 1 tickets, stamped, UUID" in result.output
    again = runner.invoke(cli, ["global-invoice", "--config", str(config_path), "--branch", BRANCH_A,
                                "--period", "2026-11-19"])
    assert again.output.count("stamped") == 1  # the same run, nothing new
    future = runner.invoke(cli, ["global-invoice", "--config", str(config_path), "--branch", BRANCH_A,
                                 "--period", "2999-01-01"])
    assert future.exit_code == 1 and "is not over" in future.output


def test_the_cli_expires_now(tmp_path, config_path):
    from click.testing import CliRunner

    from agent.app import create_app
    from agent.config import load_config
    from service.cli import cli

    app = create_app(load_config(config_path))
    sell(app.test_client(), "X2", "10.00", fecha="2026-11-19T10:00:00")
    app.config["AGENT"].close()
    result = CliRunner().invoke(cli, ["expire", "--now", "--config", str(config_path)])
    assert (result.exit_code, result.output) == (0, "Expired 1 ticket.\n")


def test_an_unusable_csd_stops_the_agent_at_start_up(tmp_path):
    from click.testing import CliRunner

    from helpers import free_port, write_config
    from service.cli import cli

    path = write_config(tmp_path, port=free_port())
    text = path.read_text().replace('portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}"\n',
                                    'portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}"\n'
                                    'csd = { cer = "csd/missing.cer", key = "csd/missing.key", password = "x" }\n', 1)
    path.write_text(text)
    result = CliRunner().invoke(cli, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert "Cannot use a CSD: company EKU9003173C9" in result.output
    assert "missing.cer" in result.output


def test_a_cancelled_global_cfdi_is_issued_again_with_a_new_folio(client, agent, invoicing):
    sell(client, "G1", "10.00")
    [first] = close_day(agent, invoicing)
    cfdi = Cfdi.get_by_id(first.cfdi)
    response = client.post(f"/{KEY_A}/cfdis/cancelar/{cfdi.uuid}?motivo=02", headers=AUTH_A)
    assert response.status_code == 200
    assert agent.store.ticket(KEY_A, BRANCH_A, "G1").status == "EXPIRADO"
    [second] = invoicing.run()
    assert (second.part, second.folio, second.state) == (2, 2, "stamped")
    assert agent.store.ticket(KEY_A, BRANCH_A, "G1").cfdi_id == second.cfdi


def test_status_shows_tickets_slips_global_invoices_and_the_csd(client, agent, invoicing, config_path):
    from click.testing import CliRunner

    from service.cli import cli

    sell(client, "S1", "116.00")
    sell(client, "S2", "10.00", fecha="2026-11-21T09:00:00")
    [run] = close_day(agent, invoicing)
    uuid = Cfdi.get_by_id(run.cfdi).uuid
    result = CliRunner().invoke(cli, ["status", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert f"branch {BRANCH_A} Centro" in result.output
    assert "tickets: 1 ALMACENADO, 1 GLOBAL" in result.output
    assert "slips: 2 pending" in result.output
    assert f"global FG-1 2026-11-20..2026-11-20: 1 tickets, stamped, total 116.00, UUID {uuid}" in result.output
    assert "CSD: sandbox test certificate, No. " in result.output


def test_a_csd_that_expires_while_the_agent_runs_fails_the_run_with_the_reason(client, agent, invoicing, tmp_path):
    from datetime import timedelta

    from csd_factory import make_csd

    from sync.csd import CsdError
    from sync.signing import Signers

    cer, key, password = make_csd(tmp_path / "csd", not_before=datetime(2024, 1, 1), days_valid=400)
    from agent.config import CsdConfig

    company = agent.config.company(KEY_A)
    company = company.model_copy(update={"csd": CsdConfig(cer=str(cer), key=str(key), password=password)})
    config = agent.config.model_copy(update={"companies": (company, *agent.config.companies[1:])})
    signers = Signers(config, agent.data_dir, "sandbox")
    signers.check(now=datetime(2024, 6, 1, tzinfo=timezone.utc))  # fine when the agent started
    with pytest.raises(CsdError, match="expired on 2025-02-04"):
        signers(company)
    assert "unusable: company EKU9003173C9: the CSD expired on 2025-02-04" in signers.describe(company)
    with pytest.raises(CsdError, match="expired"):
        Signers(config, agent.data_dir, "sandbox").check()  # and a start-up now refuses it

    invoicing.csd_for = signers
    sell(client, "X9", "10.00")
    [error] = close_day(agent, invoicing)
    run = GlobalInvoice.get()
    assert (run.state, run.tickets) == ("failed", 1)
    assert "expired on 2025-02-04" in run.last_error
    # The first retry is a minute after the failed try.
    assert run.retry_at == invoicing.clock().astimezone(timezone.utc).replace(tzinfo=None) + timedelta(minutes=1)
