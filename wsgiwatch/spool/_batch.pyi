from typing import Any

def decode(
    record_type: type[tuple[Any, ...]],
    pid: int,
    first_seq: int,
    data: bytes,
    methods: tuple[str, ...],
    sources: tuple[str, ...],
    peers: dict[bytes, str],
    routes: dict[bytes, str],
    cache_limit: int,
    /,
) -> list[Any]: ...
