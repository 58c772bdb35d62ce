"""Joining crafted kernel snapshots with the workers: which connections wait inside a worker."""

from __future__ import annotations

from support.sidecar_support import MS, S, snapshot, tcp

from wsgiwatch.sidecar.connections import classify, find_listeners, is_waiting, listener_label

W1, W2, STRANGER = 101, 102, 999
LISTEN_INODE = 500
LISTENER = tcp(state="LISTEN", port=8000, peer="0.0.0.0", peer_port=0, inode=LISTEN_INODE)
MID = 10 * S


def run_classify(socks, *, serving=None, served=None, inodes=None, listeners=None):
    inodes = inodes if inodes is not None else {W1: {LISTEN_INODE, 11, 12}, W2: {LISTEN_INODE, 21}}
    snap = snapshot([LISTENER, *socks], MID)
    return classify(
        snap,
        [LISTENER] if listeners is None else listeners,
        inodes,
        serving or {},
        served or {},
    )


# --- classify -------------------------------------------------------------------------------
def test_backlog_connections_are_counted_not_waiting() -> None:
    socks = [
        tcp(peer_port=1, inode=0, rqueue=80),
        tcp(peer_port=2, inode=0, rqueue=0),
    ]
    waiting, backlog = run_classify(socks)
    assert waiting == []
    assert backlog == 2


def test_unread_bytes_in_a_worker_socket_mean_waiting() -> None:
    waiting, backlog = run_classify([tcp(peer_port=40001, inode=11, rqueue=77, recv_ms=250)])
    assert backlog == 0
    assert len(waiting) == 1
    item = waiting[0]
    assert (item.pid, item.peer_addr, item.peer_port, item.unread) == (W1, "127.0.0.1", 40001, True)
    assert item.arrival_ns == MID - 250 * MS


def test_received_after_last_send_means_waiting_even_when_read() -> None:
    # waitress reads the request, then queues it: rqueue is 0, data newer than the last send.
    waiting, _ = run_classify([tcp(inode=21, rqueue=0, recv_ms=120, sent_ms=5000)])
    assert [(w.pid, w.unread, w.arrival_ns) for w in waiting] == [(W2, False, MID - 120 * MS)]


def test_sent_after_last_receive_is_an_answered_idle_connection() -> None:
    waiting, _ = run_classify([tcp(inode=11, recv_ms=5000, sent_ms=4990)])
    assert waiting == []


def test_equal_ages_on_a_fresh_connection_mean_waiting_unless_served_before() -> None:
    sock = tcp(inode=11, peer_port=40005, recv_ms=30, sent_ms=30)
    waiting, _ = run_classify([sock])
    assert [w.peer_port for w in waiting] == [40005]
    waiting, _ = run_classify([sock], served={W1: {("127.0.0.1", 40005)}})
    assert waiting == []
    # Served by *another* worker does not count for this one.
    waiting, _ = run_classify([sock], served={W2: {("127.0.0.1", 40005)}})
    assert [w.peer_port for w in waiting] == [40005]


def test_a_connection_being_served_is_not_waiting() -> None:
    sock = tcp(inode=11, peer_port=40006, rqueue=10)
    waiting, _ = run_classify([sock], serving={W1: {("127.0.0.1", 40006)}})
    assert waiting == []
    # The same peer served in another worker is a different connection's business.
    waiting, _ = run_classify([sock], serving={W2: {("127.0.0.1", 40006)}})
    assert len(waiting) == 1


def test_connections_on_other_ports_or_of_other_processes_are_ignored() -> None:
    socks = [
        tcp(port=9000, inode=11, rqueue=5),  # a worker's client connection elsewhere
        tcp(port=9000, inode=0, rqueue=5),  # another server's backlog
        tcp(inode=777, rqueue=5),  # our port, but held by a process that is not a worker
        tcp(state="CLOSE_WAIT", inode=12, rqueue=5),  # not ESTABLISHED
    ]
    waiting, backlog = run_classify(socks)
    assert waiting == []
    assert backlog == 0


def test_ipv4_mapped_peers_match_plain_ipv4_scoreboard_peers() -> None:
    listener6 = tcp(state="LISTEN", local="::", port=8000, peer="::", peer_port=0, inode=600)
    sock = tcp(
        local="::ffff:127.0.0.1", peer="::ffff:10.1.2.3", peer_port=40007, inode=11, rqueue=9
    )
    inodes = {W1: {600, 11}}
    # Being served (the scoreboard shows the plain IPv4 address): not waiting.
    waiting, _ = run_classify(
        [sock],
        serving={W1: {("10.1.2.3", 40007)}},
        inodes=inodes,
        listeners=[listener6],
    )
    assert waiting == []
    # Answered before on that connection (equal ages: an idle kept-alive connection).
    waiting, _ = run_classify(
        [tcp(peer="::ffff:10.1.2.3", peer_port=40007, inode=11, recv_ms=30, sent_ms=30)],
        served={W1: {("10.1.2.3", 40007)}},
        inodes=inodes,
        listeners=[listener6],
    )
    assert waiting == []
    # Not served: waiting, and reported with the address as the kernel gave it.
    waiting, _ = run_classify(
        [tcp(peer="::ffff:10.1.2.3", peer_port=40007, inode=11, rqueue=3)],
        inodes=inodes,
        listeners=[listener6],
    )
    assert [(w.peer_addr, w.peer_port) for w in waiting] == [("::ffff:10.1.2.3", 40007)]


def test_arrival_is_the_dump_midpoint_minus_last_data_recv() -> None:
    waiting, _ = run_classify(
        [
            tcp(inode=11, peer_port=1, rqueue=1, recv_ms=0),
            tcp(inode=12, peer_port=2, rqueue=1, recv_ms=1234),
        ]
    )
    assert sorted(w.arrival_ns for w in waiting) == [MID - 1234 * MS, MID]


def test_no_listeners_no_connections() -> None:
    waiting, backlog = run_classify([tcp(inode=11, rqueue=5), tcp(inode=0)], listeners=[])
    assert (waiting, backlog) == ([], 0)


# --- is_waiting -----------------------------------------------------------------------------
def test_is_waiting_without_tcp_info_is_not_waiting_unless_bytes_are_unread() -> None:
    assert not is_waiting(tcp(recv_ms=None, sent_ms=None), served_before=False)
    assert not is_waiting(tcp(recv_ms=5, sent_ms=None), served_before=False)
    assert is_waiting(tcp(rqueue=1, recv_ms=None, sent_ms=None), served_before=True)


def test_is_waiting_rules() -> None:
    assert is_waiting(tcp(recv_ms=5, sent_ms=10), served_before=True)
    assert not is_waiting(tcp(recv_ms=10, sent_ms=5), served_before=False)
    assert is_waiting(tcp(recv_ms=7, sent_ms=7), served_before=False)
    assert not is_waiting(tcp(recv_ms=7, sent_ms=7), served_before=True)


# --- listeners ------------------------------------------------------------------------------
def test_find_listeners_by_the_inodes_the_workers_hold() -> None:
    other = tcp(state="LISTEN", port=9000, peer_port=0, inode=501)
    conn = tcp(inode=11)
    snap = snapshot([LISTENER, other, conn])
    assert find_listeners(snap, {W1: {LISTEN_INODE, 11}, W2: {LISTEN_INODE}}) == [LISTENER]
    assert find_listeners(snap, {W1: {501}}) == [other]
    assert find_listeners(snap, {}) == []


def test_find_listeners_by_explicit_ports_ignores_inodes() -> None:
    other = tcp(state="LISTEN", port=9000, peer_port=0, inode=501)
    v6 = tcp(state="LISTEN", local="::", port=9000, peer="::", peer_port=0, inode=502)
    snap = snapshot([LISTENER, other, v6, tcp(port=9000, inode=11)])
    assert find_listeners(snap, {W1: {LISTEN_INODE}}, [9000]) == [other, v6]
    assert find_listeners(snap, {}, {8000}) == [LISTENER]
    # An empty port list means "find them yourself".
    assert find_listeners(snap, {W1: {LISTEN_INODE}}, []) == [LISTENER]


def test_listener_labels() -> None:
    assert listener_label(LISTENER) == "127.0.0.1:8000"
    assert listener_label(tcp(state="LISTEN", local="::", port=8000)) == "[::]:8000"
    assert listener_label(tcp(state="LISTEN", local="::1", port=8443)) == "[::1]:8443"
    assert listener_label(tcp(state="LISTEN", local="0.0.0.0", port=80)) == "0.0.0.0:80"
