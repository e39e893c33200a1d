"""Reference server for the PUT /tickets benchmark: Flask + waitress doing nothing.

It answers exactly what the agent answers on success, so the difference between the two
runs is the cost of the agent's own work (parsing, validation, durable storage).

    python bench/bare_app.py --listen 127.0.0.1:8081 --threads 16
"""
from __future__ import annotations

import argparse

from flask import Flask, Response
from waitress import serve

app = Flask(__name__)


@app.put("/<key>/tickets")
def put_ticket(key: str) -> Response:
    return Response("se guardo correctamente", status=200, mimetype="text/plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT")
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    serve(app, host=host, port=int(port), threads=args.threads)


if __name__ == "__main__":
    main()
