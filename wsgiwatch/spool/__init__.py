"""The spool: the per-process shared-memory file between a worker and the sidecar.

:mod:`.layout` defines the bytes, :mod:`.writer` is the worker's side, :mod:`.reader` the
sidecar's; :mod:`.records` holds the values read (header, records, slots, accept events).
"""
