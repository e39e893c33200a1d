"""Filling the CFDI table directly, the way an upstream will once one exists."""
from __future__ import annotations

import uuid as uuidlib
from datetime import datetime
from decimal import Decimal

from helpers import BRANCH_A, KEY_A

from agent.store import NewCfdi

XML = b'<?xml version="1.0" encoding="UTF-8"?><cfdi:Comprobante xmlns:cfdi="http://www.sat.gob.mx/cfd/4" Version="4.0"/>'
PDF = b"%PDF-1.4\n% test document\n%%EOF\n"


def new_cfdi(*, company=KEY_A, branch=BRANCH_A, kind="customer", total="453.00", production=False, **fields):
    values = dict(
        id=uuidlib.uuid4().hex,
        company=company,
        branch=branch,
        kind=kind,
        uuid=str(uuidlib.uuid4()).upper(),
        issued_at=datetime(2019, 1, 31, 12, 31, 40),
        receiver_rfc="SIMD6406302E8" if kind == "customer" else "XAXX010101000",
        receiver_name="Empresa Pruebas" if kind == "customer" else "PUBLICO EN GENERAL",
        subtotal=Decimal(total) / Decimal("1.16"),
        total=Decimal(total),
        iva=Decimal(total) - Decimal(total) / Decimal("1.16"),
        production=production,
    )
    values["subtotal"] = values["subtotal"].quantize(Decimal("0.01"))
    values["iva"] = values["total"] - values["subtotal"]
    values.update(fields)
    return NewCfdi(**values)


def attach_customer_cfdi(store, number, *, company=KEY_A, branch=BRANCH_A, pdf=True, **fields):
    ticket = store.ticket(company, branch, number)
    cfdi = new_cfdi(company=company, branch=branch, total=str(ticket.total), **fields)
    return store.record_cfdi(cfdi, [ticket.id], xml=XML, pdf=PDF if pdf else None)


def attach_global_cfdi(store, numbers, *, company=KEY_A, branch=BRANCH_A, **fields):
    tickets = [store.ticket(company, branch, n) for n in numbers]
    total = sum((t.total for t in tickets), Decimal(0))
    cfdi = new_cfdi(company=company, branch=branch, kind="global", total=str(total), serie="FG", folio="1", **fields)
    return store.record_cfdi(cfdi, [t.id for t in tickets], xml=XML, pdf=PDF)
