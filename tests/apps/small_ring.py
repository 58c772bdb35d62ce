"""The basic test app with a small ring: a thousand records fill it in a fraction of the
sidecar's poll interval (what a busy server does to the default ring between slow polls)."""

from __future__ import annotations

from apps.basic import raw_app
from wsgiwatch import WSGIWatch

RING_SIZE = 1024

application = WSGIWatch(raw_app, ring_size=RING_SIZE)
