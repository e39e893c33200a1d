"""Global CFDI benchmark: sync.cfdi40 against satcfdi's own path, on the same tickets.

Builds N varied tickets (IVA 16 %, 0 %, exento, IEPS 8 % + IVA, discounts, one to four
items each), then measures, each side in its own fresh subprocess:

- ours: sync.cfdi40.build_xml (sealed) + validate (SAT's cfdv40.xsd and catalogs) +
  write the file;
- satcfdi: satcfdi.create.cfd.cfdi40.Comprobante with InformacionGlobal and one Concepto
  per ticket, sealed with satcfdi.models.Signer (same CSD), serialized with its own XSD
  validation (xml_bytes(validate=True)) and written.

Time and process peak RSS growth come from one run; the tracemalloc peak from a second
run of the same worker (tracemalloc slows Python code down, so it would distort the time).
The measured section includes loading SAT's schema (a cold start), since that is what the
first global CFDI of the day pays. Figures only: this is not a test.

    python bench/global_invoice.py [--tickets 50000] [--only ours|satcfdi] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # csd_factory: a throwaway CSD

TARGET_SECONDS = 5.0
TARGET_MB = 250.0
SEED = 20231

CENT = Decimal("0.01")
RATE_IVA = Decimal("0.160000")
RATE_IEPS = Decimal("0.080000")


# --------------------------------------------------------------------------- tickets


def _price(rng: random.Random, exact: bool) -> Decimal:
    # Exact prices (multiples of 0.25) make every tax exact to the cent, so items of a
    # ticket can be summed per rate without leaving SAT's bounds (taxes rounded per line
    # and then summed can fall outside them, and build_xml() refuses such a ticket);
    # single-item tickets get arbitrary prices.
    if exact:
        return Decimal(rng.randint(4, 4000)) * Decimal("0.25")
    return Decimal(rng.randint(100, 99_999)) * CENT


def _insumo_text(rng: random.Random, n: int) -> str:
    items = rng.choice((1, 1, 1, 2, 2, 3, 4))
    lines = []
    subtotal = discount = Decimal(0)
    groups: dict[tuple, Decimal] = {}
    for _ in range(items):
        kind = rng.choices(("iva16", "iva0", "exento", "ieps"), weights=(70, 12, 8, 10))[0]
        price = _price(rng, exact=items > 1)
        if kind == "ieps" and items > 1:
            # IVA on (base + IEPS) = base x 0.1728: exact to the cent for multiples of 6.25.
            price = Decimal(rng.randint(1, 160)) * Decimal("6.25")
        off = Decimal(0)
        if rng.random() < 0.2 and not (kind == "ieps" and items > 1):
            # A multiple of 0.25, so the discounted base keeps the taxes exact.
            off = (price * Decimal(rng.choice((5, 10, 20))) / 25).to_integral_value() * Decimal("0.25")
        base = price - off
        subtotal += price
        discount += off
        lines.append(f"02|50202306|SKU-{n}|1|H87|Pieza|Artículo {n}|{price}|{price}|{off or ''}|02|")
        if kind == "iva16":
            tax = (base * RATE_IVA).quantize(CENT)
            lines.append(f"03|002|Tasa|0.160000|{base}|{tax}|")
            groups[("002", RATE_IVA)] = groups.get(("002", RATE_IVA), Decimal(0)) + tax
        elif kind == "iva0":
            lines.append(f"03|002|Tasa|0.000000|{base}|0.00|")
        elif kind == "exento":
            lines.append(f"03|002|Exento||{base}||")
        else:
            ieps = (base * RATE_IEPS).quantize(CENT)
            iva_base = base + ieps
            iva = (iva_base * RATE_IVA).quantize(CENT)
            lines.append(f"03|003|Tasa|0.080000|{base}|{ieps}|")
            lines.append(f"03|002|Tasa|0.160000|{iva_base}|{iva}|")
            groups[("003", RATE_IEPS)] = groups.get(("003", RATE_IEPS), Decimal(0)) + ieps
            groups[("002", RATE_IVA)] = groups.get(("002", RATE_IVA), Decimal(0)) + iva
    taxes = sum((v.quantize(CENT) for v in groups.values()), Decimal(0))
    total = subtotal - discount + taxes
    form = rng.choices(("01", "04", "28", "03"), weights=(60, 25, 10, 5))[0]
    header = (
        f"00|CFD33BASE|PROD|4.0|\n"
        f"01|B|{n}|2024-03-15T{8 + n % 12:02d}:{n % 60:02d}:10|{form}|MXN||{subtotal}|{discount}|{total}|06600|\n"
    )
    return header + "\n".join(lines) + "\n"


def make_tickets(count: int):
    from agent.insumo import parse_insumo
    from sync.cfdi40 import GlobalTicket

    rng = random.Random(SEED)
    return [GlobalTicket(f"B01-{n:07d}", parse_insumo(_insumo_text(rng, n))) for n in range(count)]


def make_invoice(tickets):
    from sync.cfdi40 import GlobalInvoice, Issuer

    return GlobalInvoice(
        issuer=Issuer("EKU9003173C9", "ESCUELA KEMPER URGATE", "601"),
        series="FG",
        folio="1",
        issued_at=datetime(2024, 3, 16, 9, 0, 0),
        postal_code="06600",
        periodicity="month",
        months="03",
        year=2024,
        tickets=tickets,
    )


# --------------------------------------------------------------------------- measuring


def _status(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS, so the peak
    # afterwards belongs to the measured section only (not to building the tickets).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_ours(invoice, csd_files, out: Path) -> dict:
    from sync.cfdi40 import build_xml, sat_schema, validate
    from sync.csd import load_csd

    csd = load_csd(*csd_files)
    phases = {}
    ts = time.perf_counter()
    sat_schema()  # validate() would load it anyway; done first to show its share
    t0 = time.perf_counter()
    phases["schema_load"] = t0 - ts
    xml = build_xml(invoice, csd)
    t1 = time.perf_counter()
    validate(xml)
    t2 = time.perf_counter()
    out.write_bytes(xml)
    t3 = time.perf_counter()
    phases.update(build_and_seal=t1 - t0, validate=t2 - t1, write=t3 - t2)
    return {"bytes": len(xml), "phases": phases}


def _concept_taxes(insumo):
    """The ticket's Traslados summed per (Impuesto, TipoFactor, TasaOCuota)."""
    groups: dict[tuple, list] = {}
    for item in insumo.items:
        for t in item.taxes:
            g = groups.setdefault((t.tax, t.factor, t.rate), [Decimal(0), None])
            g[0] += t.base
            if t.amount is not None:
                g[1] = (g[1] or Decimal(0)) + t.amount
    return groups


def run_satcfdi(invoice, csd_files, out: Path) -> dict:
    from satcfdi.create.cfd import cfdi40
    from satcfdi.models import Signer

    cer, key, password = csd_files
    signer = Signer.load(certificate=Path(cer).read_bytes(), key=Path(key).read_bytes(), password=password)
    phases = {}
    t0 = time.perf_counter()
    conceptos = []
    largest = max(invoice.tickets, key=lambda t: t.insumo.total)
    for ticket in invoice.tickets:
        ins = ticket.insumo
        traslados = [
            cfdi40.Traslado(
                impuesto=tax, tipo_factor=factor, tasa_o_cuota=rate, base=base, importe=amount,
            )
            for (tax, factor, rate), (base, amount) in _concept_taxes(ins).items()
        ]
        conceptos.append(
            cfdi40.Concepto(
                clave_prod_serv="01010101",
                cantidad=Decimal(1),
                clave_unidad="ACT",
                descripcion="Venta",
                valor_unitario=ins.subtotal,
                no_identificacion=ticket.number,
                descuento=ins.discount or None,
                objeto_imp="02" if traslados else "01",
                impuestos=cfdi40.Impuestos(traslados=traslados) if traslados else None,
            )
        )
    comprobante = cfdi40.Comprobante(
        emisor=cfdi40.Emisor(rfc=invoice.issuer.rfc, nombre=invoice.issuer.name, regimen_fiscal=invoice.issuer.tax_regime),
        lugar_expedicion=invoice.postal_code,
        receptor=cfdi40.Receptor(
            rfc="XAXX010101000", nombre="PUBLICO EN GENERAL",
            domicilio_fiscal_receptor=invoice.postal_code, regimen_fiscal_receptor="616", uso_cfdi="S01",
        ),
        conceptos=conceptos,
        moneda="MXN",
        tipo_de_comprobante="I",
        exportacion="01",
        serie=invoice.series,
        folio=invoice.folio,
        forma_pago=largest.insumo.payment_form,
        metodo_pago="PUE",
        informacion_global=cfdi40.InformacionGlobal(
            periodicidad="04", meses=invoice.months, ano=invoice.year,
        ),
        fecha=invoice.issued_at,
    )
    t1 = time.perf_counter()
    comprobante.sign(signer)
    t2 = time.perf_counter()
    xml = comprobante.xml_bytes(validate=True)
    t3 = time.perf_counter()
    out.write_bytes(xml)
    t4 = time.perf_counter()
    phases.update(build=t1 - t0, seal=t2 - t1, validate_and_serialize=t3 - t2, write=t4 - t3)
    return {"bytes": len(xml), "phases": phases}


def worker(side: str, tickets: int, csd_dir: Path, trace: bool) -> dict:
    csd_files = json.loads((csd_dir / "csd.json").read_text())
    invoice = make_invoice(make_tickets(tickets))
    out = csd_dir / f"{side}.xml"
    run = run_ours if side == "ours" else run_satcfdi
    import gc

    gc.collect()
    if trace:
        import tracemalloc

        tracemalloc.start()
        result = run(invoice, csd_files, out)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"tracemalloc_peak_mb": peak / 2**20}
    reset = _reset_peak_rss()
    rss_before = _status("VmRSS")
    t0 = time.perf_counter()
    result = run(invoice, csd_files, out)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    result.update(
        seconds=seconds,
        rss_delta_mb=peak - rss_before,
        rss_before_mb=rss_before,
        rss_peak_mb=peak,
        peak_reset=reset,
    )
    return result


def run_side(side: str, tickets: int, csd_dir: Path, timeout: float) -> dict:
    results = {}
    for trace in (False, True):
        cmd = [sys.executable, __file__, "--worker", side, "--tickets", str(tickets), "--csd-dir", str(csd_dir)]
        if trace:
            cmd.append("--trace")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            results["error"] = f"did not finish within {timeout:.0f} s"
            return results
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
            results["error"] = "\n".join(tail)
            return results
        results.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def _fmt(value, unit, target=None) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f} {unit}"
    if target is not None:
        text += " (met)" if value <= target else " (NOT met)"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickets", type=int, default=50_000)
    ap.add_argument("--only", choices=("ours", "satcfdi"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--worker", choices=("ours", "satcfdi"), help=argparse.SUPPRESS)
    ap.add_argument("--csd-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.tickets, args.csd_dir, args.trace)))
        return 0

    from csd_factory import make_csd

    sides = [args.only] if args.only else ["ours", "satcfdi"]
    report = {"tickets": args.tickets, "cpus": os.cpu_count(), "sides": {}}
    with tempfile.TemporaryDirectory(prefix="global-invoice-bench-") as tmp:
        tmp_path = Path(tmp)
        cer, key, password = make_csd(tmp_path / "csd")
        (tmp_path / "csd.json").write_text(json.dumps([str(cer), str(key), password]))
        print(f"{args.tickets} tickets, {os.cpu_count()} CPUs; each side in its own subprocess "
              f"(time + RSS run, then a tracemalloc run)", flush=True)
        for side in sides:
            print(f"  running {side} ...", flush=True)
            report["sides"][side] = run_side(side, args.tickets, tmp_path, args.timeout)

    print()
    print(f"{'':24}{'time':>22}{'peak RSS growth':>26}{'tracemalloc peak':>24}{'XML size':>12}")
    for side, r in report["sides"].items():
        if "error" in r and "seconds" not in r:
            print(f"{side:24}could not run: {r['error']}")
            continue
        print(
            f"{side:24}{_fmt(r.get('seconds'), 's', TARGET_SECONDS):>22}"
            f"{_fmt(r.get('rss_delta_mb'), 'MB', TARGET_MB):>26}"
            f"{_fmt(r.get('tracemalloc_peak_mb'), 'MB', TARGET_MB):>24}"
            f"{r.get('bytes', 0) / 1e6:>10.1f} MB"
        )
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in r.get("phases", {}).items())
        print(f"{'':24}{phases}")
        if "error" in r:
            print(f"{'':24}tracemalloc run failed: {r['error']}")
    print(f"targets: <= {TARGET_SECONDS:.0f} s and <= {TARGET_MB:.0f} MB for build + seal + XSD "
          f"validation + write of one CFDI (schema loading included: cold start)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
