"""The state bits of a request in flight, kept in memory beside the 16 flag bits its record
stores (``layout.FLAG_*``). Both paths use them: the C path reads these values from the
generated ``_layout.h``, so they are defined here once."""

from __future__ import annotations

from typing import Final

#: The bits of a request's flags that go into its record.
RECORDED_FLAGS: Final = 0xFFFF
#: A proxy header is there to parse at exit.
PROXY_PENDING: Final = 1 << 16
#: The response was iterated to its end.
EXHAUSTED: Final = 1 << 17
#: The record is written; a second close() does nothing.
FINISHED: Final = 1 << 18
#: An accept time of this request was refused as implausible (counted at entry; only
#: ever in what accept_sources returns, never kept).
TIME_REJECTED: Final = 1 << 19
#: Bits 20 to 27 carry how many front proxies the operator trusts, for the parse at exit.
TRUSTED_PROXIES_SHIFT: Final = 20
TRUSTED_PROXIES_MAX: Final = 0xFF
