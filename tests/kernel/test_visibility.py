"""Why a worker's sockets cannot be seen: checked against real processes of another user
and a real non-dumpable one (as www-data, like a sidecar next to Apache), and a fixture
procfs for the network namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.apache import as_daemon_user

from wsgiwatch.kernel import KernelObserver, visibility

AS_WWW_DATA = ["setpriv", "--reuid", "www-data", "--regid", "www-data", "--clear-groups"]
#: A www-data process that marks itself non-dumpable (as Apache's mod_wsgi daemons are),
#: then waits to be looked at.
NON_DUMPABLE = (
    "import ctypes, sys; ctypes.CDLL(None).prctl(4, 0); print('ready', flush=True); "
    "sys.stdin.read()"
)
ASK = (
    "import sys; from wsgiwatch.kernel import visibility as v; "
    "print(v.fd_blindness(int(sys.argv[1])))"
)


@pytest.fixture
def non_dumpable() -> Iterator[int]:
    proc = subprocess.Popen(
        [*AS_WWW_DATA, "/usr/bin/python3", "-c", NON_DUMPABLE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc.pid
    finally:
        proc.communicate(timeout=10)  # closes its stdin: it exits, and our pipes close


def ask_as_www_data(pid: int) -> str:
    out = subprocess.run(
        as_daemon_user(["/usr/bin/python3", "-c", ASK, str(pid)]),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def test_a_non_dumpable_process_of_our_user(non_dumpable: int) -> None:
    assert ask_as_www_data(non_dumpable) == visibility.NOT_DUMPABLE


def test_a_process_of_another_user() -> None:
    assert ask_as_www_data(os.getpid()) == visibility.OTHER_USER  # ours: root's


def test_a_readable_or_gone_process_is_not_blindness(non_dumpable: int) -> None:
    assert visibility.fd_blindness(os.getpid()) is None
    assert visibility.fd_blindness(non_dumpable) is None  # root reads everything
    assert visibility.fd_blindness(2**22 + 1) is None  # beyond pid_max: gone


def test_another_network_namespace(tmp_path: Path) -> None:
    for pid, ns in (("self", "net:[4026531840]"), ("42", "net:[4026532999]"), ("43", "")):
        (tmp_path / pid / "ns").mkdir(parents=True)
        if ns:
            (tmp_path / pid / "ns" / "net").symlink_to(ns)
    (tmp_path / "44" / "ns").mkdir(parents=True)
    (tmp_path / "44" / "ns" / "net").symlink_to("net:[4026531840]")
    assert visibility.netns_blindness(42, str(tmp_path)) == visibility.OTHER_NETNS
    assert visibility.netns_blindness(43, str(tmp_path)) is None  # unreadable: not this
    assert visibility.netns_blindness(44, str(tmp_path)) is None
    assert visibility.netns_blindness(os.getpid()) is None  # the real one: ours
    assert sys.platform.startswith("linux")


def test_the_observer_reuses_netns_verdicts_for_a_while(tmp_path: Path) -> None:
    for pid, ns in (("self", "net:[4026531840]"), ("42", "net:[4026532999]")):
        (tmp_path / pid / "ns").mkdir(parents=True)
        (tmp_path / pid / "ns" / "net").symlink_to(ns)
    cached = KernelObserver(str(tmp_path))
    fresh = KernelObserver(str(tmp_path), netns_ttl_s=0)
    for observer in (cached, fresh):
        assert observer.blindness(42, fds_seen=True) == visibility.OTHER_NETNS
    (tmp_path / "42" / "ns" / "net").unlink()
    (tmp_path / "42" / "ns" / "net").symlink_to("net:[4026531840]")  # moved to ours
    assert cached.blindness(42, fds_seen=True) == visibility.OTHER_NETNS  # not read again
    assert fresh.blindness(42, fds_seen=True) is None  # read at every call
