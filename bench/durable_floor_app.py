"""Second reference for the PUT /tickets benchmark: the cheapest durable handler.

The bare handler answers without keeping anything. This one keeps the raw body the way
the agent keeps a ticket, and no cheaper: the request waits until its bytes are appended
to a file and fsync'd, with one writer thread group-committing whatever is waiting. No
parsing, no validation, no database. Its distance from the bare handler is what the
promise "a 200 means the ticket is on disk" costs in Flask + waitress under the GIL,
before the agent does any work of its own.

    python bench/durable_floor_app.py --listen 127.0.0.1:8082 --threads 16 --file /tmp/floor.log
"""
from __future__ import annotations

import argparse
import os
import queue
import threading
from concurrent.futures import Future

from flask import Flask, Response, request
from waitress import serve

app = Flask(__name__)
_waiting: queue.SimpleQueue = queue.SimpleQueue()


def _writer(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    while True:
        group = [_waiting.get()]
        while True:
            try:
                group.append(_waiting.get_nowait())
            except queue.Empty:
                break
        os.write(fd, b"".join(body + b"\n" for body, _ in group))
        os.fsync(fd)
        for _, done in group:
            done.set_result(None)


@app.put("/<key>/tickets")
def put_ticket(key: str) -> Response:
    done: Future = Future()
    _waiting.put((request.get_data(), done))
    done.result()
    return Response("se guardo correctamente", status=200, mimetype="text/plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8082", help="HOST:PORT")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--file", required=True, help="where the bodies are appended")
    args = parser.parse_args()
    threading.Thread(target=_writer, args=(args.file,), daemon=True).start()
    host, _, port = args.listen.rpartition(":")
    serve(app, host=host, port=int(port), threads=args.threads)


if __name__ == "__main__":
    main()
