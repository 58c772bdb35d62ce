"""The worker side: what runs inside the server's processes.

The middleware (:mod:`.middleware`) and its C accelerator record each request into this
process's spool (:mod:`.process_spool`); the accept hook (:mod:`.accept_hook`) and the time
sources (:mod:`.arrival`) say when a request was accepted and when it arrived; :mod:`.routes`
turns paths into bounded route labels.
"""
