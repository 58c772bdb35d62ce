"""Whether the workers can use the spool directory the sidecar reads, seen from the sidecar.

A worker refuses a spool directory that another user owns or that others can write
(:func:`wsgiwatch.spool.writer.ensure_private_dir`), and then records nothing, saying so
once in the server's own error log (under Apache: Apache's). The sidecar, run as the
workers' user as it must be, checks the same rules, so that a refused directory shows on
its side too (``/healthz``, a gauge, one log event) instead of as a silent "0 workers".
"""

from __future__ import annotations

import os
import stat


def spool_dir_problem(path: str, *, workers: int) -> str | None:
    """Why workers would refuse ``path`` (or the sidecar cannot read it), in words with the
    remedy; None when it is fine or not there yet (the first worker creates it).
    ``workers``: how many live workers write there now (a root-owned directory is a problem
    only while none does: workers of other users refuse it, root's would not)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot look at the spool directory {path}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link, which workers refuse: name the directory itself"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory: workers record nothing"
    me = os.geteuid()
    if me == 0 and st.st_uid == 0 and not workers:
        return (
            f"{path} belongs to root, and no worker writes there: workers that run as another "
            f"user (Apache's www-data) refuse it; chown it to the workers' user, mode 0700"
        )
    if st.st_uid != me:
        return (
            f"{path} belongs to uid {st.st_uid}, not to uid {me} (this sidecar's user, which "
            f"must be the workers'): workers refuse it and record nothing; chown it to the "
            f"workers' user, mode 0700"
        )
    if st.st_mode & 0o022:
        return (
            f"{path} is writable by other users (mode {st.st_mode & 0o777:o}): workers refuse "
            f"it and record nothing; chmod 0700"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        return f"this sidecar cannot read {path} (mode {st.st_mode & 0o777:o}); chmod 0700"
    return None
