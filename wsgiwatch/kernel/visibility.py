"""Why the sidecar cannot see a worker's sockets, so that it never goes silently blind.

The kernel view needs a worker's ``/proc/PID/fd`` (to know which sockets are its own) and
netlink ``sock_diag`` in the worker's network namespace. Each can fail for its own reason,
and each has its own remedy:

- ``not_dumpable``: the worker runs as our user but is marked non-dumpable, so the kernel
  makes its ``/proc/PID`` files root's (mode 0500). Servers that start as root and switch
  user do this (Apache's mod_wsgi daemons). Remedy: Apache's ``CoreDumpDirectory``, which
  makes Apache and mod_wsgi mark their processes dumpable again.
- ``other_user``: the worker runs as another user. Remedy: run the sidecar as that user.
- ``other_netns``: the worker is in another network namespace (another container without a
  shared network): our socket dump shows other sockets. Remedy: share the namespace.
- ``no_sock_diag``: the socket dump itself is refused or missing (not Linux, seccomp, an LSM,
  a kernel without ``inet_diag``/``unix_diag``). Remedy: allow netlink ``sock_diag``.

Reading ``/proc/PID/status`` (world-readable) and ``/proc/PID/ns/net`` is enough to tell
these apart; nothing here needs privileges.
"""

from __future__ import annotations

import os
from typing import Final

NOT_DUMPABLE: Final = "not_dumpable"
OTHER_USER: Final = "other_user"
OTHER_NETNS: Final = "other_netns"
NO_SOCK_DIAG: Final = "no_sock_diag"
REASONS: Final = (NOT_DUMPABLE, OTHER_USER, OTHER_NETNS, NO_SOCK_DIAG)

#: What to do about each reason, in the words /healthz and ``wsgiwatch diagnose`` use.
REMEDIES: Final = {
    NOT_DUMPABLE: (
        "the worker switched user and is marked non-dumpable (Apache mod_wsgi daemons), so "
        "its /proc/PID/fd is root's: set CoreDumpDirectory in Apache's config (see "
        "examples/apache/wsgiwatch.conf), or run the sidecar as root"
    ),
    OTHER_USER: "run the sidecar as the workers' user",
    OTHER_NETNS: "run the sidecar in the workers' network namespace",
    NO_SOCK_DIAG: "allow netlink sock_diag (Linux, no seccomp or LSM rule refusing it)",
}


def _real_uid(pid: int, procfs_root: str) -> int | None:
    try:
        with open(f"{procfs_root}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None  # gone, or hidden from us: not a reason to report
    return None


def _netns(pid: int | str, procfs_root: str) -> str | None:
    try:
        return os.readlink(f"{procfs_root}/{pid}/ns/net")
    except OSError:
        return None


def fd_blindness(pid: int, procfs_root: str = "/proc", *, uid: int | None = None) -> str | None:
    """Why ``pid``'s ``/proc/PID/fd`` cannot be read by us, or None when it can (or the
    process is gone, which is not blindness)."""
    fd_dir = f"{procfs_root}/{pid}/fd"
    try:
        os.listdir(fd_dir)
        return None
    except FileNotFoundError:
        return None
    except PermissionError:
        pass
    except OSError:
        return None
    me = os.geteuid() if uid is None else uid
    if me == 0:
        return None  # root reads everything; a refusal here is something else (an LSM)
    owner = _real_uid(pid, procfs_root)
    if owner is None:
        return None
    return NOT_DUMPABLE if owner == me else OTHER_USER


def netns_blindness(pid: int, procfs_root: str = "/proc") -> str | None:
    """``OTHER_NETNS`` when ``pid`` is in another network namespace than we are."""
    theirs = _netns(pid, procfs_root)
    if theirs is None:
        return None  # unreadable: fd_blindness has said why
    ours = _netns("self", procfs_root)
    return OTHER_NETNS if ours is not None and ours != theirs else None
