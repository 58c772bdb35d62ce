# Types of the optional C accelerator (wsgiwatch/worker/_speedups.c).
from collections.abc import Callable, Iterator
from typing import Any, Final

LAYOUT: Final[dict[str, int]]

class Counter(Iterator[int]):
    def __init__(self, start: int = 0) -> None: ...
    def __next__(self) -> int: ...

class Spool:
    released: bool
    lost: bool
    next_check_ns: int
    def __init__(
        self,
        mm: Any,
        record_base: int,
        ring_capacity: int,
        slot_count: int,
        free_slots: list[int],
        acquire_slot: Callable[[], int],
        request_numbers: Counter,
        record_seq: Counter,
    ) -> None: ...
    def commit(self, body: bytes) -> None: ...
    def release(self) -> None: ...

class Call(list[bytes]):
    flags: int
    bytes_sent: int
    slot: int
    headers_ns: int
    status: object
    def __call__(self, *args: Any, **kwargs: Any) -> Callable[[bytes], object]: ...
    def close(self) -> None: ...
    def finish(self) -> None: ...

class Recorder:
    app: Any
    _dir: str
    _trusted_proxies: int
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any: ...

def configure(**kwargs: Any) -> None: ...

# What the C path stores for one environ value (for tests against the Python path).
def port_of(value: object) -> int: ...
def status_of(value: object) -> int: ...
def method_of(value: object) -> int: ...
def peer_of(value: object) -> bytes: ...
def in_main_interpreter() -> bool: ...

# accept_hook.note_request_ready(addr), in C.
def note_ready(addr: object) -> None: ...
