"""A machine booted a minute ago: ``CLOCK_MONOTONIC`` reads about 60 s. A
``mod_wsgi.request_start`` or a trusted proxy's ``X-Request-Start`` from before that boot
(yet within the hour the parsers allow) must never be stored as a wrapped negative accept
time (the C path) nor drop the record with ``struct.error`` (the Python path): it is
refused and counted, and the request is recorded without it.

The test sees such a clock without a reboot: it runs the requests in a Linux time
namespace whose clocks read about a minute since boot (``unshare --time``, as root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = r"""
import json, os, shutil, tempfile, time
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader, list_spools
from wsgiwatch.worker import accelerator, middleware

def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]

out = {"monotonic_s": time.monotonic(), "accelerated": accelerator.speedups is not None}
for cls in (middleware.WSGIWatch, middleware.PythonWSGIWatch):
    directory = tempfile.mkdtemp(dir="/dev/shm")
    watched = cls(app, spool_dir=directory, slots=4, ring_size=16, accept_events=4,
                  trusted_proxies=1)
    before_boot = time.time() - 1800  # half an hour ago: long before this boot
    for start in (before_boot, time.time() - 0.002):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/fresh", "REMOTE_ADDR": "127.0.0.1",
                   "REMOTE_PORT": "40000", "mod_wsgi.request_start": start,
                   "HTTP_X_REQUEST_START": "t=%.3f" % start}
        result = watched(environ, lambda status, headers, exc_info=None: None)
        list(result)
        result.close()
    (path,) = list_spools(directory)
    with SpoolReader(path, track=False) as reader:
        records = reader.read_records().records
        header = reader.header()
    with open(path, "rb") as f:
        rejected = fmt.U64.unpack_from(f.read(fmt.HEADER_SIZE), fmt.OFF_TIMES_REJECTED)[0]
    shutil.rmtree(directory)
    out[cls.__name__] = {
        "records": [[r.accept_ns, r.accept_source, r.proxy_wall_ns, r.entry_ns] for r in records],
        "write_errors": header.write_errors,
        "times_rejected": rejected,
    }
print(json.dumps(out))
"""


def _in_a_fresh_boot(code: str) -> dict[str, object]:
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    offset = -max(0, int(uptime) - 60)  # clocks that read about 60 s since boot
    ran = subprocess.run(
        [
            "unshare",
            "--time",
            f"--monotonic={offset}",
            f"--boottime={offset}",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert ran.returncode == 0, ran.stderr
    result: dict[str, object] = json.loads(ran.stdout)
    return result


def test_times_from_before_boot_are_refused_and_counted_not_wrapped_or_dropped() -> None:
    out = _in_a_fresh_boot(_SCRIPT)
    assert isinstance(out["monotonic_s"], float) and out["monotonic_s"] < 120
    assert out["accelerated"] is True  # both paths ran: the C one and the Python one
    for name in ("WSGIWatch", "PythonWSGIWatch"):
        seen = out[name]
        assert isinstance(seen, dict), seen
        old, recent = seen["records"]  # both requests are recorded
        accept, source, proxy, entry = old
        assert (accept, source, proxy) == (0, "none", 0), (name, old)  # refused, not wrapped
        accept, source, proxy, entry = recent
        assert source == "mod_wsgi" and 0 < accept <= entry, (name, recent)
        assert proxy > 0, (name, recent)
        # Each of the old request's two times counted once; nothing lost to an error.
        assert (seen["times_rejected"], seen["write_errors"]) == (2, 0), (name, seen)
