"""The sidecar at scale: 64 workers, 10,000 open connections, 100 routes.

    .venv/bin/python benchmarks/sidecar_scale.py [--workers 64] [--connections 10000]

gunicorn gthread (``--workers 64 --threads 2``, keep-alive on) serves hello world wrapped in
WSGIWatch. Requests over 100 distinct routes (route labels, not folded into one) reach every
worker; then ``--connections`` keep-alive connections make one request each and stay open,
idle. The sidecar's :class:`~wsgiwatch.sidecar.monitor.Monitor` runs in this process (idle
meanwhile) with default settings, and we time:

- polls with no worker at capacity (the usual case: listeners only, no connection dump);
- polls with one worker at capacity (a slow request in each of its two threads): the
  connections are dumped then, all 10,000 of them walked, the quiet ones skipped; timed
  with the C parser (wsgiwatch/kernel/_diag.c) and with the Python one
  (``netlink.accelerator = None``), interleaved poll by poll so both see the same load,
  wall and CPU time (the kernel's dump work runs in ``recv``: it counts as ours);
- the two parts of such a poll's dump apart: each parser on one recorded dump, and the
  kernel's work alone (as polled, without tcp_info, a filter matching nothing);
- the first poll (every worker's fds read), and polls after a worker was replaced;
- a scrape of ``/metrics`` (``generate_latest`` over the monitor): time and bytes, with
  100 routes x 64 workers of series.

Targets (issue 14): poll under 50 ms with 10,000 connections and 64 workers; ``/metrics``
rendered in under 50 ms. Everything listens on 127.0.0.1; the server is ours, stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wrk_compare as wc  # (it also puts tests/ on sys.path for `servers`)
from wrk_compare import servers

ROUTES = 100
_LETTERS = "ghijklmnopqrstuvwxyz"  # not hex digits: the route folding keeps them


def route(i: int) -> str:
    return f"/r/{_LETTERS[i // len(_LETTERS)]}{_LETTERS[i % len(_LETTERS)]}"


def get(port: int, path: str, sock: socket.socket | None = None) -> socket.socket:
    """One keep-alive request; the connection stays open for the caller."""
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while not data.endswith(b"hello\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"the server closed the connection of {path}")
        data += chunk
    return s


def spread_routes(port: int, workers: int) -> None:
    """Every route, on many connections (each lands on some worker): the route series and
    the workers' series all exist."""
    for i in range(ROUTES * 3):
        get(port, route(i % ROUTES)).close()
    for _ in range(workers * 4):
        get(port, "/hello").close()


def timed_polls(monitor: object, count: int, cpu: list[float] | None = None) -> list[float]:
    out = []
    for _ in range(count):
        t0, c0 = time.perf_counter(), time.process_time()
        monitor.poll()  # type: ignore[attr-defined]
        out.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
        time.sleep(0.05)
    return out


def polls_by_parser(monitor: object, count: int) -> dict[str, tuple[list[float], list[float]]]:
    """(wall, CPU) of polls with the C parser and with the Python one, interleaved."""
    from wsgiwatch.kernel import netlink

    accelerator = netlink.accelerator
    parsers = {"C": accelerator, "Python": None} if accelerator else {"Python": None}
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in parsers}
    try:
        for _ in range(count):
            for name, module in parsers.items():
                netlink.accelerator = module
                wall, cpu = out[name]
                wall += timed_polls(monitor, 1, cpu)
    finally:
        netlink.accelerator = accelerator
    return out


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {1000 * statistics.median(ordered):6.1f} ms, p95 {1000 * p95:6.1f} ms"


def profile(monitor: object, title: str) -> None:
    """cProfile of five polls: the top 25 functions by cumulative time."""
    import cProfile
    import pstats

    print(f"  cProfile, {title}:")
    profiler = cProfile.Profile()
    for _ in range(5):
        profiler.runcall(monitor.poll)  # type: ignore[attr-defined]
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def parser_alone(port: int) -> None:
    """One real dump of the listener's connections (as a poll at capacity asks for it),
    parsed again and again by each parser: CPU per dump, the kernel left out."""
    from wsgiwatch.kernel import netlink
    from wsgiwatch.kernel.socket_watch import _CONNECTION_STATES

    seq = netlink.next_seq()
    request = netlink.build_tcpdiag_request(
        seq, states=_CONNECTION_STATES, ports={port}, local_only=True
    )
    datagrams: list[bytes] = []
    with netlink.open_socket() as sock:
        sock.sendto(request, (0, 0))
        done = False
        while not done:
            datagrams.append(sock.recv(netlink.RECV_BUFFER_SIZE))
            done = netlink.parse_inet_diag_python(datagrams[-1], seq=seq)[1]
    sockets = sum(len(netlink.parse_inet_diag_python(d, seq=seq)[0]) for d in datagrams)
    parsers = {"Python": netlink.parse_inet_diag_python}
    if netlink.accelerator is not None:
        parsers["C"] = netlink.parse_inet_diag
    for name, parse in parsers.items():
        best, kept = float("inf"), 0
        for _ in range(5):
            t0 = time.process_time()
            kept = sum(len(parse(d, seq=seq, skip_quiet=True)[0]) for d in datagrams)
            best = min(best, time.process_time() - t0)
        print(
            f"  parser alone, one dump ({len(datagrams)} datagrams, "
            f"{sum(map(len, datagrams)) / 1e6:.1f} MB, {sockets} sockets, {kept} kept): "
            f"{name} {1000 * best:.1f} ms CPU ({1e6 * best / max(sockets, 1):.2f} us a socket)"
        )


def kernel_alone(port: int) -> None:
    """The kernel's part of a connection dump, CPU best of 5 (the replies skipped in C, not
    parsed): as the polls ask for it; without tcp_info; with a filter no socket matches (the
    walk of the established hash alone)."""
    from wsgiwatch.kernel import netlink
    from wsgiwatch.kernel.socket_watch import _CONNECTION_STATES

    def polled(seq: int, ports: set[int] = {port}) -> bytes:  # noqa: B006 (read only)
        return netlink.build_tcpdiag_request(
            seq, states=_CONNECTION_STATES, ports=ports, local_only=True
        )

    def without_info(seq: int) -> bytes:
        request = bytearray(polled(seq))
        request[16 + 3] = 0  # inet_diag_req's ext byte, after the nlmsghdr: no tcp_info
        return bytes(request)

    cases = {
        "as polled": polled,
        "without tcp_info": without_info,
        "matching nothing (the walk)": lambda seq: polled(seq, {1}),
    }
    figures = []
    with netlink.open_socket() as sock:
        for name, build in cases.items():
            best = float("inf")
            for _ in range(5):
                seq = netlink.next_seq()
                t0 = time.process_time()
                netlink.dump(sock, build(seq), seq, netlink.parse_inet_diag, ports=frozenset())
                best = min(best, time.process_time() - t0)
            figures.append(f"{name} {1000 * best:.1f} ms")
    print(f"  kernel alone, one connection dump, CPU: {'; '.join(figures)}")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--polls", type=int, default=20, help="polls timed per case")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the polls (top 25, both cases)"
    )
    args = parser.parse_args(argv)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections * 2 + 1000), hard))
    print(
        f"{os.cpu_count()} cores, python {sys.version.split()[0]}, "
        f"{time.strftime('%F %H:%M', time.gmtime())} UTC, {load()}"
    )
    print(
        f"sidecar at scale: gunicorn gthread -w {args.workers} --threads 2, "
        f"{args.connections} idle keep-alive connections, {ROUTES} routes"
    )
    from prometheus_client import CollectorRegistry, generate_latest

    from wsgiwatch.sidecar.monitor import Monitor

    extra = ["--keep-alive", "600", "--worker-connections", "2000", "--backlog", "4096"]
    if os.path.isdir("/dev/shm"):
        extra += ["--worker-tmp-dir", "/dev/shm"]
    idle: list[socket.socket] = []
    with (
        wc.spool_tmpdir("wsgiwatch-scale-") as spool_dir,
        servers.gunicorn(
            "bench_apps:application",
            spool_dir,
            worker_class="gthread",
            workers=args.workers,
            threads=2,
            extra=extra,
            env={"PYTHONPATH": wc.BENCH_DIR},
        ) as server,
    ):
        try:
            spread_routes(server.port, args.workers)
            t0 = time.monotonic()
            for _ in range(args.connections):
                idle.append(get(server.port, "/hello"))
            print(f"  {len(idle)} connections opened in {time.monotonic() - t0:.1f} s")
            monitor = Monitor(spool_dir)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(monitor)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            monitor.poll()
            first = time.perf_counter() - t0
            workers = len(monitor.registry.live())
            print(
                f"  first poll (every worker's fds read): {1000 * first:.1f} ms, {workers} workers"
            )
            quiet_cpu: list[float] = []
            quiet = timed_polls(monitor, args.polls, quiet_cpu)
            print(f"  polls, no worker at capacity:  {ms(quiet)}; CPU {ms(quiet_cpu)}")
            if args.profile:
                profile(monitor, "polls, no worker at capacity")
            # Slow requests, one at a time, until two land on one worker (both its threads
            # busy: at capacity); the connections are dumped at each poll from then on.
            slow: list[threading.Thread] = []
            deadline = time.monotonic() + 20
            while len(slow) < 40 and time.monotonic() < deadline:
                if any(w.busy >= w.blocking_capacity for w in monitor.registry.live()):
                    break
                slow.append(
                    threading.Thread(
                        target=lambda: get(server.port, "/slow/15").close(), daemon=True
                    )
                )
                slow[-1].start()
                time.sleep(0.1)
                monitor.poll()
            at_capacity = sum(w.busy >= w.blocking_capacity for w in monitor.registry.live())
            print(f"  {at_capacity} worker(s) at capacity; {load()}")
            for name, (wall, cpu) in polls_by_parser(monitor, min(args.polls, 20)).items():
                print(
                    f"  polls, a worker at capacity, {name + ' parser:':15} {ms(wall)}; "
                    f"CPU {ms(cpu)}  (target < 50 ms)"
                )
            parser_alone(server.port)
            kernel_alone(server.port)
            if args.profile:
                profile(monitor, "polls, a worker at capacity")
            scrape = []
            for _ in range(10):
                t0 = time.perf_counter()
                body = generate_latest(registry)
                scrape.append(time.perf_counter() - t0)
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            print(
                f"  /metrics: {ms(scrape)}, {len(body) / 1024:.0f} KiB, {series} samples "
                f"(target < 50 ms)"
            )
            for t in slow:
                t.join(20)
            monitor.close()
        finally:
            for s in idle:
                s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
