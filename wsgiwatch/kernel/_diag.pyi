# Types of the optional C inet_diag parser (wsgiwatch/kernel/_diag.c).
from collections.abc import Callable

from wsgiwatch.kernel.records import TcpSocket

def configure(
    make_tcp_socket: Callable[..., TcpSocket],
    states: tuple[str, ...],
    parse_error: type[Exception],
    netlink_error: type[Exception],
) -> None: ...
def parse_inet_diag(
    buf: bytes | bytearray,
    end: int,
    seq: int | None,
    port_bitmap: bytes | None,
    local_only: bool,
    skip_quiet: bool,
) -> tuple[list[TcpSocket], bool]: ...
