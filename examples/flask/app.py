"""Your Flask app, unchanged: nothing here knows about wsgiwatch (see wsgi.py)."""

from __future__ import annotations

import time

from flask import Flask

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "hello\n"


@app.get("/users/<int:user_id>")
def user(user_id: int) -> dict[str, int]:
    return {"id": user_id}


@app.get("/report")
def report() -> str:
    time.sleep(2.0)  # a slow report, an upstream call, a big upload...
    return "report\n"


@app.get("/healthz")
def healthz() -> str:
    return "ok\n"
