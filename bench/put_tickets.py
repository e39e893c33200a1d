"""PUT /tickets load benchmark: the agent against a bare Flask + waitress handler.

Both servers are started on 127.0.0.1 in the same run, loaded one after the other with the
same clients and thread count, and compared. Figures only: this is not a test.

    python bench/put_tickets.py [--seconds 15] [--clients 16] [--threads 16] [--only agent|floor|bare]
                                [--json PATH] [--tool auto|wrk|python]
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BARE_APP = Path(__file__).resolve().parent / "bare_app.py"
FLOOR_APP = Path(__file__).resolve().parent / "durable_floor_app.py"
HOST = "127.0.0.1"  # never anything else: this harness only talks to local servers

KEY = "b391655ac2242d85ddd36d37b482259b1b7dfc1c"
BRANCH = "dsfhjkajslfd45646412"
PATH = f"/{KEY}/tickets"
HEADERS = {"Authorization": "Basic dGVwb3g6dGVwb3g=", "Content-Type": "application/json"}
OK_BODY = "se guardo correctamente"

# A valid 12.36 MXN ticket; only numeroTicket changes from one request to the next.
INSUMO = (
    "00|CFD33BASE|QA|4.0|\n"
    "01|A|12A31|2026-11-20T11:09:46|01|MXN|1|10.66|0.00|12.36|68050|\n"
    "02|50202306|REF-600|1|H87|Pieza|Refresco 600 ml|10.655172|10.655172|0.00|02|\n"
    "03|002|Tasa|0.160000|10.655172|1.704828|\n"
)
_MARK = "@@TICKET@@"
# json.dumps does the escaping once; each request only splices the ticket number in
# (letters, digits and "-", which need no escaping).
BODY_HEAD, BODY_TAIL = json.dumps({
    "fecha": "2026-11-20T11:09:46",
    "insumo": INSUMO,
    "monto": 12.36,
    "numeroTicket": _MARK,
    "sucursal": BRANCH,
}).split(_MARK)


def ticket_body(ticket: str) -> str:
    return BODY_HEAD + ticket + BODY_TAIL


CONFIG = """\
[server]
listen = "{host}:{port}"
data_dir = {data_dir}
threads = {threads}

[upstream]
kind = "sandbox"

[[companies]]
key = "{key}"
username = "tepox"
password = "tepox"
rfc = "EKU9003173C9"
legal_name = "ESCUELA KEMPER URGATE"
tax_regime = "601"
periodicity = "day"
self_invoice_days = 7
portal_url = "https://facturacion.example.com/{{company}}/{{branch}}/{{ticket}}"

[[companies.branches]]
id = "{branch}"
name = "Centro"
postal_code = "68050"
timezone = "America/Mexico_City"
global_series = "FG"
printer = "none"
"""

# agent: the real thing; floor: bare + a group-committed fsync of the body and nothing
# else (bench/durable_floor_app.py); bare: a handler that only answers 200.
SIDES = ["agent", "floor", "bare"]
THROUGHPUT_TARGET = 0.8  # agent req/s >= 0.8 x bare req/s
P99_TARGET = 2.0  # agent p99 <= 2 x bare p99


class BenchError(Exception):
    """A failure reported as one clear message instead of a traceback."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- servers ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in text) or "    (no output)"


def wait_listening(name: str, proc: subprocess.Popen, port: int, logfile: Path,
                   timeout: float = 30.0) -> None:
    """Poll TCP connect until it succeeds; fail early if the server process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} before listening on "
                             f"{HOST}:{port}; its last output:\n{tail(logfile)}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not accept connections on {HOST}:{port} within {timeout:.0f} s;"
                     f" its last output:\n{tail(logfile)}")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> str:
    """SIGTERM, as systemd would, then SIGKILL if it hangs. Returns how it ended."""
    if proc.poll() is not None:
        return f"had already exited with code {proc.returncode}"
    proc.terminate()
    try:
        return f"stopped by SIGTERM, exit code {proc.wait(timeout)}"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"ignored SIGTERM for {timeout:.0f} s and was killed"


# --- load generators: each returns the same dict ------------------------------------------

def summarize(ok: int, errors: int, duration: float, p50_us: float, p90_us: float,
              p99_us: float, samples: list[str]) -> dict:
    # Throughput counts only correct answers, so a server failing fast cannot look fast.
    return {"ok": ok, "errors": errors, "duration_s": round(duration, 3),
            "rps": round(ok / duration, 1) if duration else 0.0,
            "p50_ms": round(p50_us / 1000, 3), "p90_ms": round(p90_us / 1000, 3),
            "p99_ms": round(p99_us / 1000, 3), "error_samples": samples[:3]}


WRK_SCRIPT = """\
-- Generated by bench/put_tickets.py. One Lua state per wrk thread; setup() and done() run
-- in the main state, which reaches the threads' counters through thread:get().
wrk.method = "PUT"
wrk.headers["Authorization"] = "{auth}"
wrk.headers["Content-Type"] = "application/json"
local HEAD = [==[{head}]==]
local TAIL = [==[{tail}]==]
local PREFIX = "{prefix}"
local OK = "{ok_body}"

local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  counter, ok, bad, samples, nsamples = 0, 0, 0, {{}}, 0
end

-- Unique numeroTicket per request: prefix .. wrk thread id .. "-" .. counter.
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, HEAD .. PREFIX .. id .. "-" .. counter .. TAIL)
end

function response(status, headers, body)
  body = body or ""
  if status == 200 and body:match("^%s*(.-)%s*$") == OK then ok = ok + 1 return end
  bad = bad + 1
  local s = status .. " " .. body:sub(1, 300)
  if nsamples < 3 and not samples[s] then samples[s] = true; nsamples = nsamples + 1 end
end

local function esc(s)
  return (s:gsub('[%c"\\\\]', function(c) return string.format("\\\\u%04x", c:byte()) end))
end

function done(summary, latency, requests)
  local ok, bad, seen, list = 0, 0, {{}}, {{}}
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok")
    bad = bad + t:get("bad")
    for s in pairs(t:get("samples")) do
      if not seen[s] then seen[s] = true; table.insert(list, '"' .. esc(s) .. '"') end
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"duration_us": %.0f, "requests": %.0f, "ok": %.0f, "bad": %.0f, ' ..
    '"connect": %.0f, "read": %.0f, "write": %.0f, "timeout": %.0f, ' ..
    '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "samples": [%s]}}\\n',
    summary.duration, summary.requests, ok, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    table.concat(list, ", ")))
end
"""


def load_wrk(port: int, seconds: float, clients: int, prefix: str, workdir: Path,
             wrk_threads: int | None = None) -> dict:
    script = workdir / f"put_{prefix}.lua"
    script.write_text(WRK_SCRIPT.format(auth=HEADERS["Authorization"], head=BODY_HEAD,
                                        tail=BODY_TAIL, prefix=prefix, ok_body=OK_BODY))
    # One wrk thread per CPU is enough to drive the connections; more would only steal CPU
    # from the server under test, which shares this machine. (bench/put_postgres.py, which
    # runs one wrk per agent process at once, shares the CPUs out through wrk_threads.)
    threads = max(1, min(clients, wrk_threads or os.cpu_count() or 1))
    cmd = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{max(1, round(seconds))}s",
           # A slow answer is a latency to measure, not an error to drop (default is 2 s).
           "--timeout", "10s", "-s", str(script), f"http://{HOST}:{port}{PATH}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    r = json.loads(line[len("BENCHJSON "):])
    socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    samples = list(r["samples"])
    if socket_errors:
        samples.insert(0, "socket errors: connect {connect}, read {read}, write {write}, "
                          "timeout {timeout}".format(**r))
    return summarize(r["ok"], r["bad"] + socket_errors, r["duration_us"] / 1e6,
                     r["p50_us"], r["p90_us"], r["p99_us"], samples)


def _python_client(job: tuple[int, int, str, float]) -> tuple[list[float], int, int, list[str]]:
    """One client in its own process: a keep-alive connection, requests back to back."""
    port, client_id, prefix, deadline = job
    latencies: list[float] = []
    ok = bad = counter = 0
    samples: list[str] = []
    conn = None
    while time.time() < deadline:
        counter += 1
        payload = ticket_body(f"{prefix}{client_id}-{counter}").encode()
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
            conn.request("PUT", PATH, payload, HEADERS)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            bad += 1
            sample = f"{type(exc).__name__}: {exc}"
            if conn is not None:
                conn.close()
            conn = None
        else:
            latencies.append(time.perf_counter() - t0)
            if resp.status == 200 and text.strip() == OK_BODY:
                ok += 1
                continue
            bad += 1
            sample = f"{resp.status} {text[:300]}"
        if len(samples) < 3 and sample not in samples:
            samples.append(sample)
    if conn is not None:
        conn.close()
    return latencies, ok, bad, samples


def load_python(port: int, seconds: float, clients: int, prefix: str, workdir: Path) -> dict:
    # Processes, not threads: one GIL would cap the generator below the server's speed.
    start = time.time()
    jobs = [(port, i + 1, prefix, start + seconds) for i in range(clients)]
    with multiprocessing.Pool(clients) as pool:
        parts = pool.map(_python_client, jobs)
    duration = time.time() - start
    lat = sorted(x for part in parts for x in part[0])

    def pct(p: float) -> float:  # nearest rank, in microseconds
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6 if lat else 0.0

    samples: list[str] = []
    for part in parts:
        samples += [s for s in part[3] if s not in samples]
    return summarize(sum(p[1] for p in parts), sum(p[2] for p in parts), duration,
                     pct(50), pct(90), pct(99), samples)


# --- durability ---------------------------------------------------------------------------

def count_stored(data_dir: Path) -> tuple[int | None, str]:
    """Rows in table `ticket` of the single SQLite file under data_dir (None: not checkable)."""
    files = sorted(p for p in data_dir.rglob("*") if p.is_file()
                   and (p.suffix == ".db" or p.suffix.startswith(".sqlite"))
                   and not p.name.endswith(("-wal", "-shm", "-journal")))
    with_table = []
    for path in files:
        # Opened read-write on purpose: the agent has exited, and this lets SQLite replay a
        # WAL left behind, which is exactly the data the agent promised was durable.
        db = sqlite3.connect(path)
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='ticket'"
                          ).fetchone():
                with_table.append((path, db.execute("SELECT COUNT(*) FROM ticket").fetchone()[0]))
        finally:
            db.close()
    if len(with_table) == 1:
        path, rows = with_table[0]
        return rows, path.name
    found = ", ".join(p.name for p in files) or "no *.db / *.sqlite* file"
    return None, (f"expected one SQLite file with a table `ticket` under data_dir, found "
                  f"{len(with_table)} ({found})")


# --- one side -----------------------------------------------------------------------------

def agent_config(port: int, data_dir: Path, threads: int) -> str:
    """The throwaway agent configuration (bench/put_postgres.py appends a [database])."""
    return CONFIG.format(host=HOST, port=port, data_dir=json.dumps(str(data_dir)),
                         threads=threads, key=KEY, branch=BRANCH)


def agent_cmd(config: Path) -> list[str]:
    """`ticket-agent serve --config FILE`, from this checkout."""
    return [sys.executable, "-m", "service.cli", "serve", "--config", str(config)]


def spawn(cmd: list[str], logfile: Path) -> subprocess.Popen:
    """Start a server in the repository, its output (both streams) to logfile."""
    with open(logfile, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def run_side(name: str, args: argparse.Namespace, tmp: Path, load) -> dict:
    port = free_port()
    data_dir = tmp / "data"
    if name == "agent":
        config = tmp / "agent.toml"
        config.write_text(agent_config(port, data_dir, args.threads))
        cmd = agent_cmd(config)
    elif name == "floor":
        cmd = [sys.executable, str(FLOOR_APP), "--listen", f"{HOST}:{port}",
               "--threads", str(args.threads), "--file", str(tmp / "floor.log")]
    else:
        cmd = [sys.executable, str(BARE_APP), "--listen", f"{HOST}:{port}",
               "--threads", str(args.threads)]
    logfile = tmp / f"{name}.log"
    proc = spawn(cmd, logfile)
    acked = 0
    try:
        log(f"{name}: starting on {HOST}:{port}")
        wait_listening(name, proc, port, logfile)
        if args.warmup > 0:
            log(f"{name}: warm-up {args.warmup:g} s")
            # Own ticket prefix, so warm-up tickets never collide with measured ones.
            acked += load(port, args.warmup, args.clients, "W", tmp)["ok"]
        log(f"{name}: load {args.seconds:g} s, {args.clients} clients")
        result = load(port, args.seconds, args.clients, "B", tmp)
        acked += result["ok"]
    finally:
        result_stop = stop(proc)
    log(f"{name}: {result_stop}")
    result["stop"] = result_stop
    if name == "agent":
        stored, where = count_stored(data_dir) if data_dir.exists() else (None, "no data_dir")
        result["durability"] = {"acked": acked, "stored": stored, "where": where,
                                "ok": None if stored is None else stored >= acked}
    return result


# --- report -------------------------------------------------------------------------------

def report(args: argparse.Namespace, tool: str, results: dict, failures: dict) -> dict:
    print(f"\nPUT /tickets: {args.clients} clients, {args.seconds:g} s each after "
          f"{args.warmup:g} s warm-up, {args.threads} server threads, load by {tool}")
    print(f"{'name':<8}{'requests/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'errors':>9}")
    for name, r in results.items():
        print(f"{name:<8}{r['rps']:>12.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
              f"{r['errors']:>9}")
    for name in failures:
        print(f"{name:<8}  did not run (see below)")
    for name, msg in failures.items():
        print(f"\n{name} did not run: {msg}")
    for name, r in results.items():
        if r["error_samples"]:
            print(f"\n{name}: first distinct errors:")
            for s in r["error_samples"]:
                print(f"    {s}")

    summary: dict = {}
    if "agent" in results and "bare" in results:
        a, b = results["agent"], results["bare"]
        tput = a["rps"] / b["rps"] if b["rps"] else 0.0
        p99 = a["p99_ms"] / b["p99_ms"] if b["p99_ms"] else float("inf")
        summary = {"throughput_ratio": round(tput, 3), "p99_ratio": round(p99, 3),
                   "throughput_target_met": tput >= THROUGHPUT_TARGET,
                   "p99_target_met": p99 <= P99_TARGET}
        print(f"\nthroughput agent/bare: {tput:.2f}x  (target >= {THROUGHPUT_TARGET}x: "
              f"{'met' if summary['throughput_target_met'] else 'NOT MET'})")
        print(f"p99 agent/bare:        {p99:.2f}x  (target <= {P99_TARGET}x: "
              f"{'met' if summary['p99_target_met'] else 'NOT MET'})")
        if "floor" in results and results["floor"]["rps"]:
            f = results["floor"]
            summary["floor_throughput_ratio"] = round(f["rps"] / b["rps"], 3) if b["rps"] else 0.0
            summary["agent_to_floor_ratio"] = round(a["rps"] / f["rps"], 3)
            print(f"throughput floor/bare: {summary['floor_throughput_ratio']:.2f}x  "
                  f"(durable wait alone, no parsing or database)")
            print(f"throughput agent/floor: {summary['agent_to_floor_ratio']:.2f}x  "
                  f"(the agent's own work: auth, JSON, insumo, SQLite)")
    if "agent" in results:
        d = results["agent"]["durability"]
        if d["stored"] is None:
            print(f"\ndurability check skipped: {d['where']}")
        else:
            # Requests cut off by the end of the run may be stored without being counted
            # as acknowledged, hence >= rather than ==.
            print(f"\ndurability: {d['acked']} acknowledged (200), {d['stored']} stored in "
                  f"{d['where']}: {'OK' if d['ok'] else 'TICKETS LOST'}")
    return summary


def choose_load(choice: str, clients: int):
    """(description, load function) for --tool auto|wrk|python; BenchError without wrk."""
    use_wrk = choice == "wrk" or (choice == "auto" and shutil.which("wrk"))
    if use_wrk and not shutil.which("wrk"):
        raise BenchError("wrk not found (apt-get install wrk), or use --tool python")
    if use_wrk:
        version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        return f"wrk ({version.split()[1] if version else '?'})", load_wrk
    if choice == "auto":
        log("wrk not found, using the slower Python load generator (apt-get install wrk)")
    return f"Python ({clients} processes, http.client keep-alive)", load_python


def main() -> int:
    parser = argparse.ArgumentParser(description="PUT /tickets benchmark: agent vs bare "
                                                 "Flask + waitress (127.0.0.1 only)")
    parser.add_argument("--seconds", type=float, default=15, help="measured load per server")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured load before it")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive clients")
    parser.add_argument("--threads", type=int, default=16, help="waitress threads, both servers")
    parser.add_argument("--only", choices=SIDES, help="run one server only")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator (auto: wrk if installed, else Python processes)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()

    try:
        tool, load = choose_load(args.tool, args.clients)
    except BenchError as exc:
        log(f"error: {exc}")
        return 2

    results: dict = {}
    failures: dict = {}
    for name in [args.only] if args.only else SIDES:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            try:
                results[name] = run_side(name, args, Path(tmp), load)
            except BenchError as exc:
                log(f"{name}: failed, see the report")
                failures[name] = str(exc)

    summary = report(args, tool, results, failures)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "tool": tool, "clients": args.clients, "seconds": args.seconds,
            "warmup": args.warmup, "threads": args.threads, "results": results,
            "failures": failures, **summary}, indent=2) + "\n")
    lost = results.get("agent", {}).get("durability", {}).get("ok") is False
    # Missing targets is a figure to read, not a harness failure; a server that did not run
    # or lost acknowledged tickets is.
    return 1 if failures or lost else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
