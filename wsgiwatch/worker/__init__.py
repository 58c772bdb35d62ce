"""The worker side: what runs inside the server's processes.

The middleware (:mod:`.middleware`, the public face; its parts are listed there) and its C
accelerator (``_speedups.c``, :mod:`.accelerator`) record each request into this process's
spool (:mod:`.process_spool`); the accept hook (:mod:`.accept_hook`) and the time sources
(:mod:`.arrival`, :mod:`.accept_sources`) say when a request was accepted and when it
arrived; :mod:`.routes` turns paths into bounded route labels.
"""
