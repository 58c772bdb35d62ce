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
