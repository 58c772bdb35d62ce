"""The C accelerator (wsgiwatch.worker._speedups) against the pure-Python path it stands in for.

The middleware tests run against both implementations; here is what is particular to the C
one: it is built and in use, its byte layout is spool_format's, it writes exactly the records
the Python path writes for the same requests, it leaks nothing per request, and its building
blocks refuse what they cannot handle.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
import zipfile
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.middleware_support import SMALL, StartResponse, all_records, environ_for, forget_spool

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import Record
from wsgiwatch.worker import accelerator, layout_header, middleware, request_keys
from wsgiwatch.worker.routes import peer_bytes

speedups = accelerator.speedups


def test_the_accelerator_is_built_and_in_use() -> None:
    assert speedups is not None, "wsgiwatch.worker._speedups did not build (see pip's output)"
    assert issubclass(WSGIWatch, speedups.Recorder)
    assert WSGIWatch is not middleware.PythonWSGIWatch


def test_pure_python_on_request() -> None:
    code = (
        "from wsgiwatch import WSGIWatch;"
        "from wsgiwatch.worker import accelerator, middleware;"
        "assert accelerator.speedups is None;"
        "assert WSGIWatch is middleware.PythonWSGIWatch;"
        "print('ok')"
    )
    env = dict(os.environ, WSGIWATCH_PURE_PYTHON="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


_SUB_INTERPRETER = """
try:
    import _interpreters as interpreters  # 3.13+
except ImportError:
    import _xxsubinterpreters as interpreters
if {main_first}:
    from wsgiwatch import WSGIWatch
    from wsgiwatch.worker import accelerator
    assert accelerator.speedups is not None
sub = interpreters.create()
interpreters.run_string(sub, '''
from wsgiwatch import WSGIWatch
from wsgiwatch.worker import accelerator, layout_header, middleware, request_keys
assert accelerator.speedups is None, accelerator.speedups
assert WSGIWatch is middleware.PythonWSGIWatch
''')
from wsgiwatch import WSGIWatch
from wsgiwatch.worker import accelerator
assert accelerator.speedups is not None
print("ok")
"""


@pytest.mark.parametrize("main_first", [True, False])
def test_sub_interpreters_record_in_python(main_first: bool) -> None:
    """The C module keeps one interpreter's state: mod_wsgi application groups other than
    the main one get the Python path, whichever interpreter imported wsgiwatch first."""
    out = subprocess.run(
        [sys.executable, "-c", _SUB_INTERPRETER.format(main_first=main_first)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_c_layout_header_is_generated_from_layout_py() -> None:
    """_layout.h is layout.py's, as generated; regenerate it with
    ``python -m wsgiwatch.worker.layout_header`` after a change of layout."""
    assert layout_header.HEADER_PATH.read_text() == layout_header.render()


def test_the_built_module_has_every_offset_of_layout_py() -> None:
    """What the compiled C code uses, name by name, against layout.py: every field's offset
    and size, the flags, the method codes, the in-memory bits."""
    assert speedups is not None
    expected = layout_header.layout_values()
    assert expected == speedups.LAYOUT
    # Spot checks that the generator reads layout.py as the struct module lays it out.
    slot = fmt.SLOT.unpack(bytes(range(fmt.SLOT_SIZE)))
    assert slot[-2] == bytes(range(expected["SLOT_PEER_OFFSET"], expected["SLOT_ROUTE_OFFSET"]))
    assert expected["RECORD_EXIT_OFFSET"] + expected["EXIT_SLOT_OFFSET"] + 2 == (
        fmt.RECORD_SEQ_OFFSET
    )
    assert len(expected) > 100  # every field of every struct, not a handful


_C_SOURCE = layout_header.HEADER_PATH.with_name("_speedups.c")


def test_the_c_code_writes_no_offset_of_its_own() -> None:
    """Offsets into the slot, the exit part and the header come from _layout.h: no
    ``image + 8`` or ``base + 80`` written by hand."""
    import re

    source = _C_SOURCE.read_text()
    assert '#include "_layout.h"' in source
    assert not re.findall(r"#define\s+(?:OFF_|SLOT_|RECORD_|HEADER_)", source)
    by_hand = re.findall(r"(?:image|exit_part|entry|base)\s*\+\s*\d+|image\[\d+\]", source)
    assert by_hand == []


# --- the same records from both paths ---------------------------------------------------------


def _scenario_app(environ: dict[str, Any], start_response: Any) -> Any:
    """One app, many ways of answering, chosen by the path."""
    path = environ.get("PATH_INFO", "")
    kind = path.split("/")[2] if path.count("/") >= 2 else ""
    if kind == "template":
        environ[middleware.ROUTE_KEY] = "/scenario/template/<int:id>"
    if kind == "raise-before":
        raise ValueError("before")
    if kind == "keywords":
        start_response(status="201 Created", headers=[("X-A", "1")])
        return [b"kw"]
    if kind == "odd-status":
        start_response("2xx", [])
        return [b""]
    if kind == "write":
        write = start_response("200 OK", [])
        write(b"written ")
        return [b"and returned"]
    if kind == "exc-info":
        try:
            raise KeyError("x")
        except KeyError:
            start_response("500 Oops", [], sys.exc_info())
        return [b"error page"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    if kind == "raise-after":
        raise ValueError("after")
    if kind == "tuple":
        return (b"a", b"bc")
    if kind == "multi":
        return [b"one", b"two", b"three"]
    if kind == "empty":
        return []
    if kind == "generator":
        return (chunk for chunk in (b"gen", b"erated"))
    if kind == "not-bytes":
        return [bytearray(b"array")]
    return [b"hello"]


KINDS = [
    "list",
    "tuple",
    "multi",
    "empty",
    "generator",
    "write",
    "template",
    "keywords",
    "odd-status",
    "exc-info",
    "raise-before",
    "raise-after",
    "not-bytes",
]
EXTRAS: list[dict[str, Any]] = [
    {},
    {"SCRIPT_NAME": "/mounted"},
    {"REMOTE_ADDR": "2001:db8::7", "REMOTE_PORT": "61000", "REQUEST_METHOD": "DELETE"},
    {"HTTP_X_REQUEST_START": f"t={time.time_ns() // 1000 - 5000}"},
    {"mod_wsgi.request_start": str(time.time_ns() // 1000 - 3000)},
    {"REMOTE_PORT": 40001, "SERVER_PORT": 8080},  # numbers, not text
    {"PATH_INFO_SUFFIX": "/4d6f8a1c-2b3e-4f50-8a9b-0c1d2e3f4a5b"},
]


def _run_scenarios(cls: type, directory: str) -> list[Record]:
    watched = cls(
        _scenario_app,
        spool_dir=directory,
        slots=2,
        ring_size=256,
        accept_events=4,
        trusted_proxies=1,
    )
    held = []  # responses not yet closed: the third one at a time runs without a slot
    for extra in EXTRAS:
        for kind in KINDS:
            extra = dict(extra)
            suffix = extra.pop("PATH_INFO_SUFFIX", "/42")
            environ = environ_for(f"/scenario/{kind}{suffix}", **extra)
            try:
                result = watched(environ, StartResponse())
            except ValueError:
                continue
            chunks = []
            try:
                for chunk in result:
                    chunks.append(chunk)
            except ValueError:
                pass
            held.append(result)
            if len(held) == 3:
                for response in held:
                    response.close()
                held.clear()
    for response in held:
        response.close()
    return all_records(directory)


def _comparable(record: Record) -> dict[str, Any]:
    fields = record._asdict()
    for moment in ("accept_ns", "arrival_ns", "entry_ns", "headers_ns", "exit_ns"):
        fields[moment] = fields[moment] > 0  # when differs between runs; whether does not
    del fields["pid"], fields["tid"]
    return fields


def test_c_and_python_write_the_same_records(tmp_path_factory: pytest.TempPathFactory) -> None:
    records = {}
    for cls in (WSGIWatch, middleware.PythonWSGIWatch):
        directory = str(tmp_path_factory.mktemp(cls.__name__))
        os.chmod(directory, 0o700)
        try:
            records[cls] = _run_scenarios(cls, directory)
        finally:
            forget_spool(directory)
    c_records = records[WSGIWatch]
    assert len(c_records) == len(EXTRAS) * len(KINDS)
    assert [_comparable(r) for r in c_records] == [
        _comparable(r) for r in records[middleware.PythonWSGIWatch]
    ]
    # And the scenarios did reach the paths they were written for.
    seen_flags = 0
    for record in c_records:
        seen_flags |= record.flags
    for flag in (fmt.FLAG_APP_RAISED, fmt.FLAG_ROUTE_TEMPLATE):
        assert seen_flags & flag
    assert any(r.slot == fmt.NO_SLOT for r in c_records)
    assert any(r.proxy_wall_ns for r in c_records)
    assert any(r.accept_source == "mod_wsgi" for r in c_records)
    assert {r.status for r in c_records} >= {0, 200, 201, 500}
    assert "/mounted/scenario/list/:id" in {r.route for r in c_records}


# --- no leak, no crash ------------------------------------------------------------------------


def _hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_nothing_leaks_per_request(watch_dir: str) -> None:
    watched = WSGIWatch(_hello, spool_dir=watch_dir, **SMALL)
    environ = environ_for("/users/42")

    def serve(count: int) -> None:
        for _ in range(count):
            result = watched(dict(environ), StartResponse())
            for _chunk in result:
                pass
            result.close()

    serve(2000)  # caches warm
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        serve(20000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # An environ or a Call kept per request would be over 10 MB here.
    assert grown < 100_000, f"{grown} bytes more after 20000 requests"


def test_cycles_through_the_call_are_collected(watch_dir: str) -> None:
    watched = WSGIWatch(_hello, spool_dir=watch_dir, **SMALL)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(200):
        environ = environ_for("/cycle")
        result = watched(environ, StartResponse())
        environ["the.response"] = result  # environ -> call -> environ, until close()
        result.append(environ)  # type: ignore[attr-defined]  # and call -> environ after
        result.close()
        del environ, result
    gc.collect()
    assert len(gc.get_objects()) - before < 100


def test_a_spool_closed_under_a_request_in_flight(watch_dir: str) -> None:
    watched = WSGIWatch(_hello, spool_dir=watch_dir, **SMALL)
    watched(environ_for("/first"), StartResponse()).close()  # type: ignore[attr-defined]
    result = watched(environ_for("/in-flight"), StartResponse())
    forget_spool(watch_dir)  # unmapped while the response is still with the server
    assert list(result) == [b"hello"]
    result.close()  # type: ignore[attr-defined]  # must not touch the unmapped memory
    assert WSGIWatch(_hello, spool_dir=watch_dir, **SMALL)(environ_for("/"), StartResponse())


def test_start_response_arguments_reach_the_server_as_given(watch_dir: str) -> None:
    sr = StartResponse()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with pytest.raises(TypeError):
            start_response()  # what the server's start_response says, unchanged
        write = start_response(status="200 OK", headers=[], exc_info=None)
        write(b"x")
        return []

    result = WSGIWatch(app, spool_dir=watch_dir, **SMALL)(environ_for("/kw"), sr)
    result.close()  # type: ignore[attr-defined]
    (record,) = all_records(watch_dir)
    assert (record.status, record.bytes_sent) == (200, 1)
    assert sr.calls == [("200 OK", [], None)] and sr.written == [b"x"]


# --- the building blocks refuse what they cannot handle ---------------------------------------


def test_counter_counts_like_itertools_count() -> None:
    assert speedups is not None
    counter = speedups.Counter(5)
    assert [next(counter) for _ in range(3)] == [5, 6, 7]
    assert next(iter(speedups.Counter())) == 0
    with pytest.raises(OverflowError):
        speedups.Counter(-1)


def test_spool_refuses_a_geometry_that_does_not_fit() -> None:
    assert speedups is not None
    import mmap

    mm = mmap.mmap(-1, 4096)
    counters = (speedups.Counter(1), speedups.Counter(0))
    try:
        with pytest.raises(ValueError, match="smaller"):
            speedups.Spool(mm, 256 + 144, 1000, 1, [], lambda: 0, *counters)
        with pytest.raises(ValueError, match="geometry"):
            speedups.Spool(mm, 256, 4, 1, [], lambda: 0, *counters)  # slots overlap records
        spool = speedups.Spool(mm, 256 + 144, 4, 1, [], lambda: 0, *counters)
        with pytest.raises(ValueError, match="184"):
            spool.commit(b"short")
        spool.commit(bytes(fmt.RECORD_SEQ_OFFSET))
        assert fmt.U64.unpack_from(mm, fmt.OFF_RING_HEAD)[0] == 1
        spool.release()
        assert spool.released
        with pytest.raises(ValueError, match="released"):
            spool.commit(bytes(fmt.RECORD_SEQ_OFFSET))
        with pytest.raises(TypeError):
            speedups.Call()
    finally:
        mm.close()


# --- the values the C path reads without a dict, against the Python path's -----------------

_PORTISH = st.one_of(
    st.text(alphabet="0123456789", max_size=12),
    st.text(alphabet="0123456789 +-_x\u0663", max_size=8),  # int() takes some of these
    st.integers(min_value=-(2**70), max_value=2**70),
    st.none(),
)
_STATUSISH = st.one_of(
    st.text(alphabet="0123456789 OKx\u0663", max_size=8).map(lambda s: s + " OK"),
    st.text(max_size=6),
    st.sampled_from(["200 OK", "404 Not Found", "099 Odd", "000 Zero", "2000", "20", ""]),
)
_METHODISH = st.one_of(st.sampled_from(fmt.METHODS), st.text(max_size=8))
_PEERISH = st.one_of(
    st.text(alphabet="0123456789abcdef.:", max_size=60),
    st.text(max_size=45),  # non-ASCII: the Python cache path
)


@given(_PORTISH)
def test_port_as_the_python_path_stores_it(value: Any) -> None:
    assert speedups is not None
    assert speedups.port_of(value) == request_keys.port_number(value)


@given(_STATUSISH)
def test_status_as_the_python_path_stores_it(value: str) -> None:
    assert speedups is not None
    assert speedups.status_of(value) == request_keys.status_code(value)


@given(_METHODISH)
def test_method_as_the_python_path_stores_it(value: str) -> None:
    assert speedups is not None
    assert speedups.method_of(value) == fmt.METHOD_CODES.get(value, 0)


@given(_PEERISH)
def test_peer_as_the_python_path_stores_it(value: str) -> None:
    assert speedups is not None
    assert speedups.peer_of(value) == peer_bytes(value)


# --- no compiler, no accelerator: the install still works ---------------------------------

_SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "wsgiwatch")


def test_install_without_a_compiler_still_succeeds(tmp_path: Any) -> None:
    """``pip wheel`` with a C compiler that always fails: the build goes on without the
    extension, and the package it makes records in pure Python."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    for name in _SOURCES:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy(path, source / name)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        env=dict(os.environ, CC="false"),  # /bin/false: every compile fails
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.iterdir()
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")]
        archive.extractall(installed)
    probe = (
        "from wsgiwatch import WSGIWatch;"
        "from wsgiwatch.worker import accelerator, middleware;"
        "assert accelerator.speedups is None;"
        "assert WSGIWatch is middleware.PythonWSGIWatch;"
        "print(middleware.__file__)"
    )
    # -S: no site-packages, and a cwd away from the project: only the wheel's files answer
    ran = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env=dict(os.environ, PYTHONPATH=str(installed)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(installed / "wsgiwatch" / "worker" / "middleware.py")
