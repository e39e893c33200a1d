"""The store manager's panel: plain server-rendered pages in Spanish, behind the company's
own credentials (the same user and password its POS terminals use).

A manager logs in once (a signed session cookie, not HTTP Basic, so the browser does not
keep asking and a "Salir" button works), then sees today per branch, searches tickets,
reprints a slip, downloads a CFDI, and previews and builds a closed period's factura
global. Every form that changes something carries a per-session token, so a link on
another site cannot make the manager's browser do it. See docs/panel.md.
"""
from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import wraps

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from peewee import fn

from agent import messages
from agent.health import checks
from agent.models import (
    EXPIRED,
    IN_GLOBAL,
    INVOICED,
    JOB_FAILED,
    JOB_PENDING,
    JOB_PRINTED,
    PUSH_PENDING,
    PUSH_STOPPED,
    STORED,
    Cfdi,
    GlobalInvoice,
    PrintJob,
    Receipt,
    Ticket,
)
from agent.periods import period_of
from agent.writer import StorageUnavailable

bp = Blueprint("panel", __name__, url_prefix="/panel")

STATUS_NAMES = {STORED: "Almacenado", INVOICED: "Facturado", EXPIRED: "Expirado", IN_GLOBAL: "En factura global"}
RUN_NAMES = {"reserved": "Pendiente", "stamped": "Timbrada", "failed": "Falló, se reintentará",
             "waiting": "En proceso en Facturapi", "void": "Sin tickets (anulada)"}  # fmt: skip
EVENT_NAMES = {"stored": "Guardado", "replaced": "Reemplazado", "expired": "Expirado", "cfdi": "CFDI",
               "synced": "Enviado a Facturapi", "sync-stopped": "Envío detenido", "sync-refused": "Facturapi lo rechazó",
               "cancelled": "CFDI cancelado"}  # fmt: skip
JOB_NAMES = {"pending": "pendiente", "printing": "imprimiendo", "printed": "impresa", "failed": "no impresa"}
REASON_NAMES = {"sale": "Impresión", "replaced": "Impresión tras reemplazo", "reprint": "Reimpresión"}
PERIODICITY_NAMES = {"day": "diaria", "week": "semanal", "fortnight": "quincenal", "month": "mensual",
                     "two_months": "bimestral"}  # fmt: skip
# The health checks' names, as the banner shows them. Their details stay as the checks
# write them: the same text /healthz and `status` give the store's IT person.
CHECK_NAMES = {"database": "Base de datos", "disk": "Disco", "wal": "Registro de escritura",
               "scheduler": "Tareas programadas", "printer": "Impresora", "upstream": "Facturación",
               "csd": "Certificado (CSD)"}  # fmt: skip
PAGE_SIZE = 50


def _agent():
    return current_app.config["AGENT"]


# -- session ------------------------------------------------------------------------------


def login_required(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        company = _agent().config.company(session.get("company", ""))
        if company is None:
            return redirect(url_for("panel.login", next=request.full_path if request.query_string else request.path))
        g.company = company
        return view(*args, **kwargs)

    return wrapper


def _check_token() -> None:
    sent = request.form.get("token", "")
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500).
    if not sent or not hmac.compare_digest(sent.encode("utf-8", "replace"), session.get("token", "").encode()):
        abort(400, "El formulario venció; vuelva a intentarlo desde la página.")


@bp.app_template_global()
def form_token() -> str:
    if "token" not in session:
        session["token"] = secrets.token_urlsafe(24)
    return session["token"]


@bp.app_template_filter("money")
def money(value) -> str:
    return f"${Decimal(value or 0):,.2f}"


@bp.route("/entrar", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        user, password = request.form.get("usuario", ""), request.form.get("contrasena", "")
        logins, address = _agent().logins, request.remote_addr or "?"
        credential = logins.digest("panel", user, password)
        wait = logins.retry_after(address, credential)
        if wait is not None:
            response = make_response(render_template("panel/login.html", error=messages.too_many_attempts(wait)), 429)
            response.headers["Retry-After"] = str(wait)
            return response
        company = next((c for c in _agent().config.companies if logins.check(c, user, password)), None)
        if company is None:
            logins.failed(address, f"panel login as {user[:64]!r}")
        else:
            logins.succeeded(address, credential)
            session.clear()
            session["company"] = company.key
            target = request.args.get("next", "")
            # Only a path of this panel: a crafted ?next= must not send the manager elsewhere.
            return redirect(target if target.startswith("/panel/") else url_for("panel.today"))
        error = "Usuario o contraseña incorrectos."
    return render_template("panel/login.html", error=error), (401 if error else 200)


@bp.route("/salir", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("panel.login"))


# -- today ------------------------------------------------------------------------------


@dataclass
class BranchDay:
    branch: object  # BranchConfig
    day: date
    stored: int = 0
    total: Decimal = Decimal(0)
    printed: int = 0
    pending_print: int = 0
    failed_print: int = 0
    printer_error: str | None = None
    pending_sync: int = 0
    stopped_sync: int = 0
    expired: int = 0
    invoiced: int = 0
    invoiced_total: Decimal = Decimal(0)
    in_global: int = 0
    global_total: Decimal = Decimal(0)


def branch_day(company, branch, now: datetime) -> BranchDay:
    """Today's figures of one branch: tickets sold today in the branch's own time zone."""
    day = now.astimezone(branch.zone).date()
    start, end = datetime.combine(day, datetime.min.time()), datetime.combine(day, datetime.max.time())
    today = (Ticket.company == company.key) & (Ticket.branch == branch.id) & Ticket.sold_at.between(start, end)
    out = BranchDay(branch, day)
    for status, count, total in (
        Ticket.select(Ticket.status, fn.COUNT(Ticket.id), fn.SUM(Ticket.total)).where(today).group_by(Ticket.status).tuples()
    ):
        total = Ticket.total.python_value(total) or Decimal(0)
        out.stored += count
        out.total += total
        if status == EXPIRED:
            out.expired = count
        elif status == INVOICED:
            out.invoiced, out.invoiced_total = count, total
        elif status == IN_GLOBAL:
            out.in_global, out.global_total = count, total
    # Tickets with a printed slip (a reprint does not count twice); slips still waiting
    # or given up, counted per slip.
    jobs = dict(
        PrintJob.select(PrintJob.state, fn.COUNT(fn.DISTINCT(PrintJob.ticket))).join(Ticket).where(today)
        .group_by(PrintJob.state).tuples()
    )  # fmt: skip
    out.printed, out.pending_print, out.failed_print = jobs.get(JOB_PRINTED, 0), jobs.get(JOB_PENDING, 0), jobs.get(JOB_FAILED, 0)
    last = (
        PrintJob.select(PrintJob.last_error).join(Ticket)
        .where((Ticket.company == company.key) & (Ticket.branch == branch.id) & PrintJob.last_error.is_null(False)
               & PrintJob.state.in_([JOB_PENDING, JOB_FAILED]))
        .order_by(PrintJob.id.desc()).scalar()
    )  # fmt: skip
    out.printer_error = last
    if _agent().uses_facturapi(company.key):
        unsent = Ticket.select(fn.COUNT(Ticket.id)).where(
            (Ticket.company == company.key) & (Ticket.branch == branch.id) & Ticket.synced_at.is_null()
        ).scalar()
        states = dict(
            Receipt.select(Receipt.state, fn.COUNT(Receipt.ticket))
            .where((Receipt.company == company.key) & (Receipt.branch == branch.id)
                   & Receipt.state.in_([PUSH_PENDING, PUSH_STOPPED]))
            .group_by(Receipt.state).tuples()
        )  # fmt: skip
        out.pending_sync = unsent + states.get(PUSH_PENDING, 0)
        out.stopped_sync = states.get(PUSH_STOPPED, 0)
    return out


def _health(company) -> list:
    """The agent's checks that concern this company, or the whole agent."""
    return [check for check in checks(_agent()) if check.company in (None, company.rfc)]


@bp.route("/")
@login_required
def today():
    now = datetime.now(UTC)
    days = [branch_day(g.company, branch, now) for branch in g.company.branches]
    return render_template("panel/today.html", days=days, health=_health(g.company), now=now, check_names=CHECK_NAMES)


# -- tickets ------------------------------------------------------------------------------


@bp.route("/tickets")
@login_required
def tickets():
    number = request.args.get("numero", "").strip()
    day_text = request.args.get("fecha", "").strip()
    status = request.args.get("estado", "")
    branch_id = request.args.get("sucursal", "")
    query = Ticket.select().where(Ticket.company == g.company.key)
    error = None
    if number:
        query = query.where(Ticket.number.contains(number))
    if day_text:
        try:
            day = date.fromisoformat(day_text)
        except ValueError:
            error = "La fecha debe tener el formato AAAA-MM-DD."
        else:
            query = query.where(Ticket.sold_at.between(datetime.combine(day, datetime.min.time()),
                                                       datetime.combine(day, datetime.max.time())))  # fmt: skip
    if status in STATUS_NAMES:
        query = query.where(Ticket.status == status)
    if g.company.branch(branch_id):
        query = query.where(Ticket.branch == branch_id)
    rows = [] if error else list(query.order_by(Ticket.sold_at.desc(), Ticket.id.desc()).limit(PAGE_SIZE))
    return render_template("panel/tickets.html", rows=rows, error=error, statuses=STATUS_NAMES,
                           args=request.args, limit=PAGE_SIZE)  # fmt: skip


def _own_ticket(branch_id: str, number: str) -> Ticket:
    ticket = _agent().store.ticket(g.company.key, branch_id, number)
    if ticket is None:
        abort(404, f"No existe el ticket {number} en la sucursal {branch_id}.")
    return ticket


@bp.route("/tickets/<branch_id>/<path:number>")
@login_required
def ticket(branch_id: str, number: str):
    agent = _agent()
    row = _own_ticket(branch_id, number)
    cfdis = [cfdi for _, _, cfdi in agent.store.cfdi_rows(g.company.key, number=number, branch=branch_id)]
    receipt = Receipt.get_or_none(Receipt.ticket == row.id)
    branch = g.company.branch(branch_id)
    return render_template("panel/ticket.html", ticket=row, history=_history(row, branch), cfdis=cfdis,
                           receipt=receipt, branch=branch, statuses=STATUS_NAMES,
                           printers=sorted(branch.printers) if branch else [])  # fmt: skip


def _history(row: Ticket, branch) -> list[tuple[datetime, str, str | None]]:
    """(local time, what happened, error) of a ticket, oldest first: its events and its
    slips, in the branch's time, since that is the clock the manager reads."""
    zone = branch.zone if branch else UTC

    def local(moment: datetime) -> datetime:
        return moment.replace(tzinfo=UTC).astimezone(zone)

    items = [(local(row.created_at), "Guardado", None)]
    for event in _agent().store.events(row):
        text = EVENT_NAMES.get(event.kind, event.kind) + (f" · {event.detail}" if event.detail else "")
        items.append((local(event.at), text, None))
    for job in PrintJob.select().where(PrintJob.ticket == row.id).order_by(PrintJob.id):
        text = f"{REASON_NAMES.get(job.reason, job.reason)}: {JOB_NAMES.get(job.state, job.state)}"
        if job.printed_at:
            text += f" a las {local(job.printed_at):%H:%M:%S}"
        if job.printer:
            text += f" en {job.printer}"
        items.append((local(job.created_at), text, job.last_error))
    return sorted(items, key=lambda item: item[0])


@bp.route("/tickets/<branch_id>/<path:number>/reimprimir", methods=["POST"])
@login_required
def reprint(branch_id: str, number: str):
    _check_token()
    agent = _agent()
    row = _own_ticket(branch_id, number)
    branch = g.company.branch(branch_id)
    name = request.form.get("impresora", "")
    if branch is None or (name and name not in branch.printers):
        abort(400, "Esa impresora no existe en la sucursal.")
    printer = branch.printers.get(name) if name else branch.printer
    if printer == "none":
        flash("La sucursal no tiene impresora configurada.", "error")
    else:
        agent.print_queue.enqueue(row.id, name, "reprint")
        agent.on_print_job()
        flash(f"Reimpresión del ticket {number} enviada a la cola de impresión.", "ok")
    return redirect(url_for("panel.ticket", branch_id=branch_id, number=number))


@bp.route("/cfdi/<cfdi_id>.<kind>")
@login_required
def cfdi_file(cfdi_id: str, kind: str):
    agent = _agent()
    cfdi = agent.store.cfdi(g.company.key, cfdi_id)
    if cfdi is None or kind not in ("xml", "pdf"):
        abort(404, "No existe ese CFDI.")
    path = agent.store.cfdi_file(cfdi, kind)
    if path is None:
        abort(404, f"Ese CFDI no tiene {kind.upper()}.")
    mimetype = "application/xml" if kind == "xml" else "application/pdf"
    response = Response(path.read_bytes(), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{cfdi.uuid}.{kind}"'
    return response


# -- global invoices --------------------------------------------------------------------


@bp.route("/facturas-globales")
@login_required
def global_invoices():
    runs = list(
        GlobalInvoice.select().where(GlobalInvoice.company == g.company.key)
        .order_by(GlobalInvoice.period_first.desc(), GlobalInvoice.branch, GlobalInvoice.part).limit(200)
    )  # fmt: skip
    cfdis = {c.id: c for c in Cfdi.select().where(Cfdi.id.in_([r.cfdi for r in runs if r.cfdi]))} if runs else {}
    return render_template("panel/global_invoices.html", runs=runs, cfdis=cfdis, run_names=RUN_NAMES,
                           yesterday=_yesterday(g.company),
                           periodicity=PERIODICITY_NAMES.get(g.company.periodicity, g.company.periodicity))  # fmt: skip


def _yesterday(company) -> date:
    zone = company.branches[0].zone
    return datetime.now(UTC).astimezone(zone).date() - timedelta(days=1)


def _period_form():
    """(branch, period, error) from the build form."""
    branch = g.company.branch(request.values.get("sucursal", ""))
    if branch is None:
        return None, None, "Elija una sucursal."
    try:
        day = date.fromisoformat(request.values.get("fecha", ""))
    except ValueError:
        return branch, None, "La fecha debe tener el formato AAAA-MM-DD."
    period = period_of(day, g.company.periodicity)
    closes = period.closes_at(branch.zone)
    if datetime.now(UTC) < closes:
        return branch, None, f"El periodo {period.first}..{period.last} aún no termina: cierra el {closes:%Y-%m-%d %H:%M}."
    return branch, period, None


def _invoicing():
    background = _agent().background
    invoicing = getattr(background, "global_invoicing", None)
    if invoicing is None:
        abort(503, "La facturación global no está disponible en este proceso.")
    return invoicing


@bp.route("/facturas-globales/vista-previa", methods=["POST"])
@login_required
def global_preview():
    _check_token()
    branch, period, error = _period_form()
    if error:
        flash(error, "error")
        return redirect(url_for("panel.global_invoices"))
    from sync.expiry import expire_overdue

    expire_overdue(_agent().store, _agent().config)
    previews = _invoicing().preview(g.company, branch, period)
    return render_template("panel/global_preview.html", branch=branch, period=period, previews=previews)


@bp.route("/facturas-globales/emitir", methods=["POST"])
@login_required
def global_build():
    _check_token()
    branch, period, error = _period_form()
    if error:
        flash(error, "error")
        return redirect(url_for("panel.global_invoices"))
    agent, invoicing = _agent(), _invoicing()
    invoicing.reserve(g.company, branch, period)
    # Also retries this period's failed parts at once, as `ticket-agent global-invoice` does.
    for run in agent.global_runs.to_stamp(datetime.max, g.company.key):
        if run.branch == branch.id and run.period_first == period.first:
            invoicing.stamp(run)
    runs = [r for r in agent.global_runs.runs(g.company.key, branch.id) if r.period_first == period.first]
    if not runs:
        flash(f"No hay tickets por facturar en {period.first}..{period.last}.", "ok")
    for run in runs:
        if run.state == "stamped":
            flash(f"Factura global {run.series}-{run.folio} timbrada: {run.tickets} tickets.", "ok")
        else:
            flash(f"Factura global {run.series}-{run.folio}: {RUN_NAMES.get(run.state, run.state)}. {run.last_error or ''}",
                  "error")  # fmt: skip
    return redirect(url_for("panel.global_invoices"))


@bp.errorhandler(400)
@bp.errorhandler(404)
@bp.errorhandler(503)
def _error_page(exc):
    return render_template("panel/error.html", message=exc.description), exc.code


@bp.errorhandler(StorageUnavailable)
def _storage_unavailable(exc: StorageUnavailable):
    # A reprint or a global invoice writes: a full disk is a page saying so, not a plain-text 500.
    current_app.logger.error("panel: storage unavailable: %s", exc)
    return render_template("panel/error.html", message="La base de datos del agente no puede guardar en este "
                           "momento (disco lleno, sin permisos o detenido). Intente de nuevo más tarde."), 503
