"""``_layout.h``: the spool layout as the C accelerator sees it, generated from
:mod:`wsgiwatch.spool.layout` (and the in-memory bits of :mod:`.call_state`), so the layout
is written down once. ``WSGIWATCH_PURE_PYTHON=1 python -m wsgiwatch.worker.layout_header``
rewrites the header (pure Python: a module built from the old header may not load);
tests/worker/test_speedups.py checks that the committed one is current and that the built
module's ``LAYOUT`` holds the same values."""

from __future__ import annotations

import sys
from pathlib import Path

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker import call_state

HEADER_PATH = Path(__file__).with_name("_layout.h")


def _fields(prefix: str, fields: dict[str, tuple[int, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, (offset, size) in fields.items():
        out[f"{prefix}_{name.upper()}_OFFSET"] = offset
        out[f"{prefix}_{name.upper()}_LEN"] = size
    return out


def layout_values() -> dict[str, int]:
    """Every name the C code may use, with its value."""
    values: dict[str, int] = {"HEADER_SIZE": fmt.HEADER_SIZE}
    identity = fmt.field_layout(fmt.HEADER_IDENTITY, fmt.HEADER_IDENTITY_FIELDS)
    values.update(_fields("HEADER", identity))
    for name in dir(fmt):
        if name.startswith("OFF_") or name.startswith("FLAG_") or name.startswith("SOURCE_"):
            values[name] = getattr(fmt, name)
    values["SLOT_SIZE"] = fmt.SLOT_SIZE
    values.update(_fields("SLOT", fmt.field_layout(fmt.SLOT, fmt.SLOT_FIELDS)))
    values["RECORD_SIZE"] = fmt.RECORD_SIZE
    values["RECORD_EXIT_OFFSET"] = fmt.RECORD_EXIT_OFFSET
    values["RECORD_EXIT_LEN"] = fmt.RECORD_EXIT.size
    # Offsets inside the exit part, which the C path builds on its own before the copy.
    values.update(_fields("EXIT", fmt.field_layout(fmt.RECORD_EXIT, fmt.RECORD_EXIT_FIELDS)))
    values["RECORD_SEQ_OFFSET"] = fmt.RECORD_SEQ_OFFSET
    values["NO_SLOT"] = fmt.NO_SLOT
    values["INVALID_SEQ"] = fmt.INVALID_SEQ
    for code, method in enumerate(fmt.METHODS):
        values[f"METHOD_{method}"] = code
    for name in ("RECORDED_FLAGS", "PROXY_PENDING", "EXHAUSTED", "FINISHED", "TIME_REJECTED"):
        values[name] = getattr(call_state, name)
    return values


def _literal(value: int) -> str:
    return f"{value:#x}u" if value > 0x7FFF_FFFF else str(value)


def render() -> str:
    values = layout_values()
    width = max(map(len, values))
    lines = [
        "/* The spool layout for _speedups.c. GENERATED from wsgiwatch/spool/layout.py and",
        " * wsgiwatch/worker/call_state.py by `WSGIWATCH_PURE_PYTHON=1 python -m",
        " * wsgiwatch.worker.layout_header`:",
        " * do not edit; tests/worker/test_speedups.py checks that it is current. */",
        "#ifndef WSGIWATCH_LAYOUT_H",
        "#define WSGIWATCH_LAYOUT_H",
        "",
    ]
    lines += [f"#define {name:<{width}} {_literal(value)}" for name, value in values.items()]
    lines += ["", "/* Every name above, for the module's LAYOUT dict (checked by the tests). */"]
    lines.append("#define LAYOUT_NAMES(X) \\")
    lines += [f"    X({name}) \\" for name in values]
    lines += ["", "#endif", ""]
    return "\n".join(lines)


def main() -> int:
    HEADER_PATH.write_text(render())
    print(f"wrote {HEADER_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
