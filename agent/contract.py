"""The autofacturación contract: where tickets enter (PUT /tickets), where the POS asks for
their CFDIs (GET /cfdis), expires them (PUT/POST /expired), downloads and cancels CFDIs.

Paths, status codes and texts follow the contract document exactly (see docs/contract.md).
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import re
import zipfile
from dataclasses import replace
from datetime import timezone

from flask import Blueprint, Response, current_app, g, request

from agent import messages
from agent.auth import company_required
from agent.http import TEXT, text_response
from agent.models import CFDI_CANCELLED
from agent.requests_in import BadRequest, parse_expire, parse_json_object, parse_ticket, ticket_number
from agent.store import REPLACED, STORED_NEW, TicketConflict, TicketNotFound
from sync.upstream import CANCEL_PENDING, MOTIVES, UpstreamError

log = logging.getLogger(__name__)

bp = Blueprint("contract", __name__)

CFDI_ID = re.compile(r"[0-9a-f]{32}")
UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _agent():
    return current_app.config["AGENT"]


def _json_body() -> dict:
    if request.mimetype != "application/json":
        raise _Refused(messages.NOT_JSON_TYPE, 415)
    return parse_json_object(request.get_data(cache=False))


class _Refused(Exception):
    def __init__(self, text: str, status: int):
        self.text, self.status = text, status


@bp.errorhandler(_Refused)
def _refused(exc: _Refused):
    return text_response(exc.text, exc.status)


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest):
    return text_response(str(exc), 400)


@bp.route("/<key>/tickets", methods=["PUT"])
@company_required
def put_ticket(key: str):
    agent = _agent()
    ticket = parse_ticket(_json_body(), g.company, key)
    if ticket.printer is not None and agent.link_wait(key):
        ticket = replace(ticket, print_delay=agent.link_wait(key))
    try:
        outcome = agent.store.put_ticket(ticket)
    except TicketConflict as exc:
        text = messages.replace_refused(ticket.number, ticket.branch, exc.status, exc.synced, exc.cfdi_uuid)
        return text_response(text, 409)
    if outcome in (STORED_NEW, REPLACED):
        log.debug("ticket %s/%s %s", ticket.branch, ticket.number, outcome)
        agent.on_ticket_stored()
        if ticket.printer is not None:
            agent.on_print_job()
    return text_response(messages.SAVED)


@bp.route("/<key>/expired", methods=["PUT", "POST"])
@company_required
def expire_ticket(key: str):
    number, branch = parse_expire(_json_body(), g.company)
    try:
        _agent().store.expire_ticket(key, branch, number, reason="expired by the POS (PUT /expired)")
    except TicketNotFound:
        return text_response(messages.ticket_missing(number, branch), 400)
    except TicketConflict as exc:
        return text_response(messages.expire_refused(number, branch, exc.cfdi_uuid), 409)
    return text_response(messages.expired(number, branch))


@bp.route("/<key>/cfdis", methods=["GET"])
@company_required
def list_cfdis(key: str):
    store = _agent().store
    number, branch = _cfdi_filters()
    rows = store.cfdi_rows(key, number=number, branch=branch)
    first = next(rows, None)
    if first is None:
        if number is not None and store.tickets_numbered(key, number, branch):
            return text_response(messages.no_cfdi_yet(number, branch or "*"), 400)
        # The contract documents a text with its 204. HTTP forbids a body on 204, so
        # servers drop it; the text goes in a header too for clients that log it.
        response = Response(status=204, content_type=TEXT)
        response.headers["X-Mensaje"] = messages.NO_CFDIS
        return response
    base = _public_base(key)
    zones = {branch.id: branch.zone for branch in g.company.branches}

    def stream():
        # Rows go out in ~64 KB chunks: one write per row would be 100,000 syscalls.
        chunk = ['{ "cfdis": [\n']
        size = 0
        for index, item in enumerate(cfdi_rows_json(itertools.chain([first], rows), base, zones)):
            chunk.append(item if index == 0 else ",\n" + item)
            size += len(item)
            if size > 65536:
                yield "".join(chunk)
                chunk, size = [], 0
        chunk.append("\n] }\n")
        yield "".join(chunk)

    return Response(stream(), status=200, content_type=TEXT)


def _cfdi_filters() -> tuple[str | None, str | None]:
    raw_number = request.args.get("ticket") or None
    branch = request.args.get("sucursal") or None
    problems = []
    number = None
    if raw_number is not None:
        number = ticket_number(raw_number)
        if number is None:
            problems.append(messages.BAD_TICKET_NUMBER)
    if branch is not None and g.company.branch(branch) is None:
        problems.append(messages.unknown_branch(branch))
    if problems:
        raise BadRequest(problems)
    return number, branch


def _public_base(key: str) -> str:
    configured = _agent().config.server.public_url
    base = configured.rstrip("/") if configured else request.host_url.rstrip("/")
    return f"{base}/{key}"


@bp.route("/<key>/descargasCfdi", methods=["GET"])
@company_required
def download_cfdi(key: str):
    store = _agent().store
    cfdi_id = request.args.get("idCfdi", "")
    representation = request.args.get("representacion", "XML_PDF")
    production = request.args.get("produccion")
    if representation not in ("XML", "PDF", "XML_PDF"):
        raise BadRequest([messages.representation_invalid(representation)])
    if production not in (None, "true", "false"):
        raise BadRequest([messages.production_invalid(production)])
    cfdi = store.cfdi(key, cfdi_id) if CFDI_ID.fullmatch(cfdi_id) else None
    if cfdi is None or (production is not None and (production == "true") != cfdi.production):
        return text_response(messages.cfdi_missing(cfdi_id), 404)
    xml_path = store.cfdi_file(cfdi, "xml")
    pdf_path = store.cfdi_file(cfdi, "pdf")
    if representation == "XML":
        if xml_path is None:
            return text_response(messages.cfdi_file_missing(cfdi_id, "XML"), 404)
        return _attachment(xml_path.read_bytes(), "application/xml", f"{cfdi.uuid}.xml")
    if representation == "PDF":
        if pdf_path is None:
            return text_response(messages.cfdi_file_missing(cfdi_id, "PDF"), 404)
        return _attachment(pdf_path.read_bytes(), "application/pdf", f"{cfdi.uuid}.pdf")
    if xml_path is None and pdf_path is None:
        return text_response(messages.cfdi_file_missing(cfdi_id, "XML ni PDF"), 404)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in (xml_path, pdf_path):
            if path is not None:
                archive.write(path, f"{cfdi.uuid}{path.suffix}")
    return _attachment(buffer.getvalue(), "application/zip", f"{cfdi.uuid}.zip")


def _attachment(content: bytes, mimetype: str, filename: str) -> Response:
    response = Response(content, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@bp.route("/<key>/cfdis/cancelar/<uuid>", methods=["GET", "POST", "PUT", "DELETE"])
@company_required
def cancel_cfdi(key: str, uuid: str):
    agent = _agent()
    cfdi = agent.store.cfdi_by_uuid(key, uuid) if UUID.fullmatch(uuid) else None
    if cfdi is None:
        return text_response(messages.cfdi_uuid_missing(uuid), 404)
    if request.method == "GET":
        # A link that cancels a tax document on GET would fire on any prefetch.
        response = text_response(messages.cancel_use_post(), 405)
        response.headers["Allow"] = "POST, PUT, DELETE"
        return response
    motive, substitute = _cancel_params()
    if cfdi.status == CFDI_CANCELLED:
        return text_response(messages.already_cancelled(cfdi.uuid))
    try:
        upstream = agent.upstream_for(key)
        result = upstream.cancel(cfdi.uuid, motive, substitute, production=cfdi.production, upstream_id=cfdi.upstream_id)
    except UpstreamError as exc:
        log.warning("cancel of %s refused upstream: %s", cfdi.uuid, exc)
        return text_response(messages.cancel_failed(cfdi.uuid, str(exc)), 502)
    if result.status == CANCEL_PENDING:
        return text_response(messages.cancel_pending(cfdi.uuid), 202)
    agent.store.record_cancellation(cfdi.id, motive, substitute, result.at)
    log.info("CFDI %s cancelled, motive %s", cfdi.uuid, motive)
    return text_response(messages.cancelled(cfdi.uuid, motive))


def _cancel_params() -> tuple[str, str | None]:
    values = dict(request.args)
    if request.content_length and request.mimetype == "application/json":
        values.update({k: v for k, v in parse_json_object(request.get_data(cache=False)).items() if v is not None})
    elif request.form:
        values.update(request.form)
    # SAT's motive for "issued with errors, no relation" is what a store asks for almost
    # always; it needs no substitute, so it is the default.
    motive = str(values.get("motivo", "02"))
    if motive not in MOTIVES:
        raise BadRequest([messages.motive_invalid(values.get("motivo"))])
    substitute = values.get("folioSustitucion") or None
    if motive == "01" and not (isinstance(substitute, str) and UUID.fullmatch(substitute)):
        raise BadRequest([messages.substitute_required()])
    return motive, (substitute.upper() if motive == "01" else None)


def cfdi_rows_json(rows, base: str, zones: dict):
    """The elements of GET /cfdis, fields and formats exactly as in the contract.

    Everything but the branch and the ticket number belongs to the CFDI, so its JSON is
    made once per CFDI: a global CFDI lists thousands of tickets."""
    cfdi_id, middle = None, ""
    for number, branch, cfdi in rows:
        if cfdi.id != cfdi_id:
            cfdi_id, middle = cfdi.id, _cfdi_fields_json(cfdi, base, zones.get(branch, timezone.utc))
        yield f'{{"idSucursal": {json.dumps(branch)}, {middle}, "noTicket": {json.dumps(number)}}}'


def _cfdi_fields_json(cfdi, base: str, zone) -> str:
    cancelled = ""
    if cfdi.cancelled_at:
        local = cfdi.cancelled_at.replace(tzinfo=timezone.utc).astimezone(zone)
        cancelled = local.strftime("%Y-%m-%d %H:%M:%S") + ".0"
    query = f"idCfdi={cfdi.id}&produccion={_bool(cfdi.production)}&representacion="
    fields = {
        "rfc": cfdi.receiver_rfc,
        "razonSocial": cfdi.receiver_name,
        "fecha": cfdi.issued_at.strftime("%Y-%m-%d %H:%M:%S") + ".0",
        "folio": cfdi.folio,
        "status": cfdi.status,
        "uuid": cfdi.uuid,
        "monto": f"{cfdi.total:.6f}",
        "idCfd": cfdi.id,
        "serie": cfdi.serie,
        "subtotal": f"{cfdi.subtotal:.6f}",
        "descuento": f"{cfdi.discount:.6f}",
        "tipoMoneda": cfdi.currency,
        "tipoCambio": "1.0000",
        "iva": f"{cfdi.iva:.6f}",
        "fechaCancelacion": cancelled,
        "tienePDF": _bool(bool(cfdi.pdf_file)),
        "pedimento": "",
        "fechaPedimento": "",
        "aduana": "",
        "pdfAndXmlDownload": f"{base}/descargasCfdi?{query}XML_PDF",
        "pdfDownload": f"{base}/descargasCfdi?{query}PDF",
        "xmlDownload": f"{base}/descargasCfdi?{query}XML",
        "cancelCfdi": f"{base}/cfdis/cancelar/{cfdi.uuid}",
        "produccion": _bool(cfdi.production),
    }
    return json.dumps(fields, ensure_ascii=False)[1:-1]


def _bool(value: bool) -> str:
    return "true" if value else "false"
