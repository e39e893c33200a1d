"""Reading the bodies the POS sends: from JSON to validated values, or Spanish reasons.

Plain functions with no Flask in them, so the rules can be tested and reused (the
manager panel and the fuzz tests use them too).
"""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation

from agent import messages
from agent.config import CompanyConfig
from agent.insumo import InsumoError, parse_insumo
from agent.store import NewTicket

TICKET_NUMBER = re.compile(r"[A-Za-z0-9_-]{1,40}")
FECHA = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})")
CENT = Decimal("0.01")
MAX_MONTO = Decimal("999999999999.99")


class BadRequest(ValueError):
    """One or more problems, each a line that names the field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_json_object(body: bytes) -> dict:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest([messages.BODY_NOT_UTF8]) from None
    try:
        # Decimal for every number: money never passes through a float.
        data = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        where = f" (línea {exc.lineno}, columna {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadRequest([messages.body_not_json(detail + where)]) from None
    except RecursionError:  # "[[[[..." nested deeper than Python's stack, within the size limit
        raise BadRequest([messages.body_not_json("anidado a más profundidad de la que se acepta")]) from None
    if not isinstance(data, dict):
        raise BadRequest([messages.BODY_NOT_OBJECT])
    return data


def _reject_constant(name: str):
    raise ValueError(f"{name} no es un número válido")


def ticket_number(value: object) -> str | None:
    """The ticket number as text, or None if it breaks the contract's format.

    Old POS software sends the number as a JSON integer; it is the same ticket."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if isinstance(value, str) and TICKET_NUMBER.fullmatch(value):
        return value
    return None


def parse_ticket(data: dict, company: CompanyConfig, company_key: str) -> NewTicket:
    """Validate a PUT /tickets body; every problem found is reported at once."""
    problems: list[str] = []

    number = ticket_number(data.get("numeroTicket"))
    if number is None:
        problems.append(messages.BAD_TICKET_NUMBER)

    branch = data.get("sucursal")
    printer = None
    if branch is None or branch == "":
        problems.append(messages.field_error("sucursal", messages.MISSING))
    elif not isinstance(branch, str) or company.branch(branch) is None:
        problems.append(messages.unknown_branch(str(branch)))
    else:
        printer = _printer(company.branch(branch), data.get("impresora"), problems)

    sold_at = _parse_fecha(data, problems)
    total = _parse_monto(data.get("monto"), problems)

    raw_insumo = data.get("insumo")
    insumo = None
    if raw_insumo is None or raw_insumo == "":
        problems.append(messages.field_error("insumo", messages.MISSING))
    elif not isinstance(raw_insumo, str):
        problems.append(messages.field_error("insumo", "debe ser texto"))
    else:
        try:
            insumo = parse_insumo(raw_insumo)
        except InsumoError as exc:
            problems.append(messages.insumo_invalid(str(exc)))
    if insumo is not None and total is not None and insumo.total.quantize(CENT) != total:
        problems.append(messages.monto_mismatch(total, insumo.total))

    if problems:
        raise BadRequest(problems)
    return NewTicket(
        company=company_key,
        branch=branch,
        number=number,
        sold_at=sold_at,
        total=total,
        insumo=insumo,
        body_hash=body_hash(data["fecha"] if "fecha" in data else data["data"], total, raw_insumo),
        printer=printer,
    )


def _printer(branch, name: object, problems: list[str]) -> str | None:
    """The printer a ticket's slip goes to: "" for the branch's own, a name from its
    `printers` when the POS asks with "impresora", None when that printer is "none"."""
    if name is None or name == "":
        return None if branch.printer == "none" else ""
    if not isinstance(name, str) or name not in branch.printers:
        problems.append(messages.unknown_printer(str(name), branch.id, sorted(branch.printers)))
        return None
    return None if branch.printers[name] == "none" else name


def _parse_fecha(data: dict, problems: list[str]) -> datetime | None:
    # The contract's parameter table calls the field "data" while its example sends
    # "fecha"; POS clients exist for both readings, so both are accepted.
    value = data.get("fecha")
    alias = data.get("data")
    if value is None:
        value = alias
    elif alias is not None and alias != value:
        problems.append(messages.both_fecha_and_data())
        return None
    if value is None or value == "":
        problems.append(messages.field_error("fecha", messages.MISSING))
        return None
    match = FECHA.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        problems.append(messages.fecha_format(value))
        return None
    try:
        return datetime(*map(int, match.groups()))  # strptime costs 10x more on the hot path
    except ValueError:
        problems.append(messages.fecha_format(value))
        return None


def _parse_monto(value: object, problems: list[str]) -> Decimal | None:
    if value is None or value == "":
        problems.append(messages.field_error("monto", messages.MISSING))
        return None
    amount: Decimal | None = None
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    elif isinstance(value, str) and re.fullmatch(r"\d{1,12}(\.\d{1,2})?", value):
        amount = Decimal(value)
    try:
        valid = (
            amount is not None
            and amount.is_finite()
            and CENT <= amount <= MAX_MONTO
            and amount == amount.quantize(CENT)
        )
    except InvalidOperation:
        valid = False
    if not valid:
        problems.append(messages.monto_invalid(value))
        return None
    return amount.quantize(CENT)


def body_hash(fecha: str, total: Decimal, insumo: str) -> str:
    """What makes two PUTs of one ticket "the same": CRLF vs LF is not a difference."""
    canonical = "\x1f".join((fecha, f"{total:.2f}", insumo.replace("\r\n", "\n")))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_expire(data: dict, company: CompanyConfig) -> tuple[str, str]:
    problems: list[str] = []
    raw_number = data.get("noTicket")
    number = ticket_number(raw_number)
    if raw_number is None or raw_number == "":
        problems.append(messages.field_error("noTicket", messages.MISSING))
    elif number is None:
        problems.append(messages.BAD_TICKET_NUMBER)
    branch = data.get("sucursal")
    if branch is None or branch == "":
        problems.append(messages.field_error("sucursal", messages.MISSING))
    elif not isinstance(branch, str) or company.branch(branch) is None:
        problems.append(messages.unknown_branch(str(branch)))
    if problems:
        raise BadRequest(problems)
    return number, branch
