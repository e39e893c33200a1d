"""Slips beyond the sale: reprint a ticket's slip, or pull its QR or slip for a POS that
prints by itself (see docs/printing.md)."""
from __future__ import annotations

import io

import qrcode
from flask import Blueprint, Response, current_app, g, request

from agent import messages
from agent.auth import company_required
from agent.http import text_response
from agent.requests_in import BadRequest, parse_json_object, ticket_number
from agent.slips import layout_of, printer_of, slip_for
from printer.slip import render_escpos, render_png

bp = Blueprint("printing", __name__)

_EC = {"L": qrcode.constants.ERROR_CORRECT_L, "M": qrcode.constants.ERROR_CORRECT_M,
       "Q": qrcode.constants.ERROR_CORRECT_Q, "H": qrcode.constants.ERROR_CORRECT_H}  # fmt: skip


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest):
    return text_response(str(exc), 400)


def _ticket(key: str, branch_id: str, number: str):
    """The ticket and its branch config, or a ready 4xx answer."""
    branch = g.company.branch(branch_id)
    if branch is None:
        return None, None, text_response(messages.unknown_branch(branch_id), 400)
    if ticket_number(number) is None:
        return None, None, text_response(messages.BAD_TICKET_NUMBER, 400)
    ticket = current_app.config["AGENT"].store.ticket(key, branch_id, number)
    if ticket is None:
        return None, None, text_response(messages.ticket_missing(number, branch_id), 404)
    return ticket, branch, None


def _slip(key: str, branch_id: str, number: str):
    """The ticket's slip and its branch config, or a ready 4xx answer."""
    ticket, branch, refused = _ticket(key, branch_id, number)
    if refused:
        return None, None, refused
    link = current_app.config["AGENT"].receipts.link_of(ticket.id)
    return slip_for(g.company, branch, ticket.number, ticket.sold_at, ticket.total, link), branch, None


@bp.route("/<key>/tickets/<branch_id>/<number>/reimprimir", methods=["POST", "PUT"])
@company_required
def reprint(key: str, branch_id: str, number: str):
    ticket, branch, refused = _ticket(key, branch_id, number)
    if refused:
        return refused
    name = ""
    if request.content_length:
        name = parse_json_object(request.get_data(cache=False)).get("impresora") or ""
    # Not a string (a list, an object) is not a printer's name, and unhashable besides.
    if name and (not isinstance(name, str) or name not in branch.printers):
        raise BadRequest([messages.unknown_printer(str(name), branch.id, sorted(branch.printers))])
    if printer_of(branch, name) == "none":
        return text_response(messages.no_printer(branch.id), 409)
    agent = current_app.config["AGENT"]
    agent.print_queue.enqueue(ticket.id, name, "reprint")
    agent.on_print_job()
    return text_response(messages.reprint_queued(number, branch.id), 202)


@bp.route("/<key>/tickets/<branch_id>/<number>/qr", methods=["GET"])
@company_required
def qr_png(key: str, branch_id: str, number: str):
    slip_, branch, refused = _slip(key, branch_id, number)
    if refused:
        return refused
    code = qrcode.QRCode(error_correction=_EC[branch.qr_error_correction], box_size=8, border=4)
    code.add_data(slip_.url)
    buffer = io.BytesIO()
    code.make_image().save(buffer, format="PNG")
    response = Response(buffer.getvalue(), mimetype="image/png")
    response.headers["X-Portal-URL"] = slip_.url
    return response


@bp.route("/<key>/tickets/<branch_id>/<number>/recibo", methods=["GET"])
@company_required
def slip(key: str, branch_id: str, number: str):
    slip_, branch, refused = _slip(key, branch_id, number)
    if refused:
        return refused
    kind = request.args.get("formato", "escpos")
    if kind not in ("escpos", "png"):
        raise BadRequest([messages.format_invalid(kind)])
    if kind == "png":
        return Response(render_png(slip_, layout_of(branch)), mimetype="image/png")
    response = Response(render_escpos(slip_, layout_of(branch)), mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="{branch_id}_{number}.bin"'
    return response
