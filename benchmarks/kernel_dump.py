"""How long one kernel snapshot takes with N loopback connections open.

    .venv/bin/python benchmarks/kernel_dump.py            # N = 100, 200, 1000
    .venv/bin/python benchmarks/kernel_dump.py 500 --rounds 500

Each connection is two TCP sockets (client and accepted server end), plus the listener. Half
the server ends hold unread bytes, as stalled requests would. Prints the mean and median
time per ``KernelObserver.snapshot`` (TCP only, filtered to the listener's port, as the
sidecar polls), the same with unix sockets, the parse alone, and ``socket_inodes``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import time
from collections.abc import Callable, Iterator

from wsgiwatch.kernel import KernelObserver, netlink


@contextlib.contextmanager
def connections(n: int) -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * n + 64), hard))
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=n))
        port = listener.getsockname()[1]
        for i in range(n):
            client = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            server_end = stack.enter_context(listener.accept()[0])
            if i % 2:
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            del server_end
        yield port


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()  # warm caches (address names, imports)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def report(label: str, times: list[float]) -> None:
    print(
        f"  {label:<34} mean {statistics.fmean(times):7.3f} ms   "
        f"median {statistics.median(times):7.3f} ms"
    )


def raw_reply(port: int) -> tuple[int, list[bytes]]:
    """The datagrams of one filtered IPv4 dump, to time the parser alone."""
    with netlink.open_socket() as sock:
        seq = netlink.next_seq()
        sock.sendto(netlink.build_inet_diag_request(socket.AF_INET, seq, ports=[port]), (0, 0))
        chunks: list[bytes] = []
        done = False
        while not done:
            chunks.append(sock.recv(netlink.RECV_BUFFER_SIZE))
            done = netlink.split_messages(chunks[-1], seq=seq)[1]
    return seq, chunks


def bench(observer: KernelObserver, n: int, rounds: int) -> None:
    with connections(n) as port:
        snap = observer.snapshot(tcp_ports=[port])
        print(
            f"{n} connections: {len(snap.tcp)} TCP sockets in the dump, "
            f"{len(snap.unix)} unix sockets on the host"
        )
        tcp_only = timed(lambda: observer.snapshot(tcp_ports=[port], unix=False), rounds)
        report("snapshot(tcp_ports=[port])", tcp_only)
        report(
            "snapshot(tcp_ports=[port]) + unix", timed(lambda: observer.snapshot([port]), rounds)
        )
        seq, chunks = raw_reply(port)
        parse = timed(lambda: [netlink.parse_inet_diag(c, seq=seq) for c in chunks], rounds)
        report(f"parse only ({len(chunks)} datagrams)", parse)
        report("socket_inodes(own pid)", timed(lambda: observer.socket_inodes(os.getpid()), rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("connections", nargs="*", type=int, default=[100, 200, 1000])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    observer = KernelObserver()
    for n in args.connections:
        bench(observer, n, args.rounds)


if __name__ == "__main__":
    main()
