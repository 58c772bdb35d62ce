"""procfs helpers, on the committed fixture tree and on this process's real /proc."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgiwatch.kernel import KernelObserver, procfs
from wsgiwatch.kernel.errors import KernelParseError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_PROC = str(FIXTURES / "proc")
# Process 4242 of the fixture tree holds the recorded v4 and unix listeners and accepted
# sockets (capture_fixtures.py writes its links); 4243 holds socket 8134.
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
HELD = {MANIFEST[g][k] for g in ("v4", "unix") for k in ("listener_inode", "accepted_inode")}


def test_socket_inodes_from_fixture_links() -> None:
    # fd 0 is /dev/null, 1 a pipe, 5 an anon inode: only socket:[N] links count.
    assert procfs.socket_inodes(4242, FIXTURE_PROC) == HELD
    assert KernelObserver(FIXTURE_PROC).socket_inodes(4243) == {8134}


def test_process_without_fd_dir_or_gone_has_no_sockets() -> None:
    assert procfs.socket_inodes(4244, FIXTURE_PROC) == set()  # no fd/ (kernel thread-like)
    assert procfs.socket_inodes(999_999, FIXTURE_PROC) == set()  # vanished
    assert procfs.socket_inodes(1, "/nonexistent/proc") == set()  # no procfs at all


def test_process_of_another_user_has_no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    # As root we cannot be refused for real; refuse the open as the kernel would (EACCES).
    def refuse(path: str, flags: int, *args: object) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(procfs.os, "open", refuse)
    assert procfs.socket_inodes(4242, FIXTURE_PROC) == set()


def test_fd_closed_between_listing_and_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    real_readlink = os.readlink

    closed = int(os.readlink(f"{FIXTURE_PROC}/4242/fd/3")[8:-1])

    def readlink(name: str, *, dir_fd: int) -> str:
        if name == "3":
            raise FileNotFoundError(2, "No such file or directory", name)
        return real_readlink(name, dir_fd=dir_fd)

    monkeypatch.setattr(procfs.os, "readlink", readlink)
    assert procfs.socket_inodes(4242, FIXTURE_PROC) == HELD - {closed}


def test_malformed_socket_link_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "7" / "fd").mkdir(parents=True)
    (tmp_path / "7" / "fd" / "3").symlink_to("socket:[12x]")
    with pytest.raises(KernelParseError, match=r"7/fd/3.*socket:\[12x\]"):
        procfs.socket_inodes(7, str(tmp_path))


def test_start_ticks_from_fixture_stat() -> None:
    assert procfs.process_start_ticks(4242, FIXTURE_PROC) == 123456  # comm has spaces, []
    assert procfs.process_start_ticks(4243, FIXTURE_PROC) == 987654321  # comm "a) b (c"
    assert KernelObserver(FIXTURE_PROC).process_start_ticks(999_999) is None  # vanished


def test_malformed_stat_names_the_file() -> None:
    with pytest.raises(KernelParseError, match=r"4244/stat.*need at least 22"):
        procfs.process_start_ticks(4244, FIXTURE_PROC)
    with pytest.raises(KernelParseError, match="no '\\)'"):
        procfs.parse_start_ticks(b"12 (unterminated S 1 2 3")
    fields = b" ".join([b"S"] + [b"1"] * 18 + [b"later"])
    with pytest.raises(KernelParseError, match="'later'"):
        procfs.parse_start_ticks(b"1 (x) " + fields)


@given(
    comm=st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\0\n"), max_size=15
    ),
    start=st.integers(0, 2**64 - 1),
)
def test_start_ticks_whatever_the_command_name(comm: str, start: int) -> None:
    fields = ["S", "1", "2", "3", "0", "-1", "4194560"] + ["0"] * 12 + [str(start), "1024", "7"]
    line = f"4242 ({comm}) {' '.join(fields)}\n".encode()
    assert procfs.parse_start_ticks(line) == start


def test_live_socket_inodes_of_this_process() -> None:
    with socket.socket() as a, socket.socket(socket.AF_UNIX) as b:
        inodes = procfs.socket_inodes(os.getpid())
        assert {os.fstat(a.fileno()).st_ino, os.fstat(b.fileno()).st_ino} <= inodes
        closed = os.fstat(a.fileno()).st_ino
    assert closed not in procfs.socket_inodes(os.getpid())


def test_live_start_ticks_of_this_process_and_a_child() -> None:
    mine = procfs.process_start_ticks(os.getpid())
    assert mine is not None and mine > 0
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as child:
        theirs = procfs.process_start_ticks(child.pid)
        child.communicate(b"")
    assert theirs is not None and theirs >= mine
    assert procfs.process_start_ticks(child.pid) is None  # reaped: gone


def test_sample_from_fixture_stat() -> None:
    # 4242's stat has utime 12 and stime 3 ticks (fields 14 and 15), and no statm.
    sample = procfs.process_sample(4242, FIXTURE_PROC)
    assert sample is not None
    assert sample.start_ticks == 123456
    assert sample.cpu_seconds == 15 / os.sysconf("SC_CLK_TCK")
    assert sample.rss_bytes is None
    assert procfs.process_sample(999_999, FIXTURE_PROC) is None  # vanished


def test_malformed_statm_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_bytes((FIXTURES / "proc" / "4242" / "stat").read_bytes())
    (tmp_path / "7" / "statm").write_text("9000 lots\n")
    with pytest.raises(KernelParseError, match=r"7/statm.*lots"):
        procfs.process_sample(7, str(tmp_path))


def test_live_sample_agrees_with_ps() -> None:
    """This process's memory and CPU time as ``ps`` reads them (its own parser of /proc)."""
    burn = 0
    for i in range(2_000_000):  # enough CPU time to read as more than a few ticks
        burn += i
    before = os.times()
    sample = procfs.process_sample(os.getpid())
    after = os.times()
    out = subprocess.run(
        ["ps", "-o", "rss=", "-p", str(os.getpid())], capture_output=True, text=True, check=True
    )
    assert sample is not None and sample.rss_bytes is not None
    ps_rss = int(out.stdout) * 1024
    # The two reads are a few ms apart; this process allocates little meanwhile.
    assert abs(sample.rss_bytes - ps_rss) <= max(1 << 20, ps_rss // 20)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    low = before.user + before.system - 2 * tick
    high = after.user + after.system + 2 * tick
    assert low <= sample.cpu_seconds <= high


def test_pid_exists() -> None:
    assert procfs.pid_exists(os.getpid())
    assert procfs.pid_exists(1)  # init: another user's (or ours, as root): exists either way
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        child.wait()
    assert not procfs.pid_exists(child.pid)  # reaped: gone


def test_running_until_reaped_is_not_running() -> None:
    """A child that has exited is a zombie until waited for: not running any more."""
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as child:
        ticks = procfs.process_start_ticks(child.pid)
        assert ticks is not None
        assert procfs.process_running(child.pid, ticks)
        assert not procfs.process_running(child.pid, ticks + 1)  # another process, same pid
        assert child.stdin is not None
        child.stdin.close()
        deadline = time.monotonic() + 10
        while procfs.process_running(child.pid, ticks) and time.monotonic() < deadline:
            time.sleep(0.01)  # it exits; we do not wait for it yet
        assert not procfs.process_running(child.pid, ticks)  # a zombie
        assert procfs.process_start_ticks(child.pid) == ticks  # still listed
        child.wait()
    assert not procfs.process_running(child.pid, ticks)  # reaped: gone
    assert not procfs.process_running(4244 + 99, 1, FIXTURE_PROC)


def test_exit_watch_sees_a_child_exit_as_process_running_does() -> None:
    """A pidfd per followed process: not exited while it runs, exited once it is a zombie
    and once reaped; a wrong start time (a reused pid) is never followed."""
    watch = procfs.ExitWatch()
    assert watch.enabled  # Linux 5.3+ with os.pidfd_open: this machine
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as child:
        ticks = procfs.process_start_ticks(child.pid)
        assert ticks is not None
        assert not watch.follow(child.pid, ticks + 1)  # another process under its pid
        assert watch.follow(child.pid, ticks) and watch.exited() == set()
        assert child.stdin is not None
        child.stdin.close()
        deadline = time.monotonic() + 10
        while not watch.exited() and time.monotonic() < deadline:
            time.sleep(0.01)  # it exits; we do not wait for it yet
        assert watch.exited() == {(child.pid, ticks)}
        assert not procfs.process_running(child.pid, ticks)  # a zombie: the two agree
        child.wait()
    assert watch.exited() == {(child.pid, ticks)}  # reaped: still exited
    watch.forget(child.pid, ticks)
    assert watch.exited() == set()
    watch.close()
    assert not procfs.ExitWatch(FIXTURE_PROC).follow(os.getpid(), 1)  # fixture roots: never
