"""The sidecar exporter: reads the workers' spools and the kernel, finds head-of-line
blocking, and serves Prometheus metrics."""
