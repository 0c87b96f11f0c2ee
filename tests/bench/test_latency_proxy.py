"""The latency proxy adds at least its delay each way, keeps order, and cuts after exactly N bytes.

Fast (well under a second each) and loopback only, so they run in the normal suite. Timing checks
are lower bounds only: a busy machine may make things slower, never faster.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.bench.latency_proxy import Cut, LatencyProxy

DELAY = 0.012


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _SinkHandler(socketserver.BaseRequestHandler):
    """Reads everything, then answers with the byte count: shows what reached the server."""

    def handle(self) -> None:
        total = 0
        while data := self.request.recv(65536):
            total += len(data)
        self.server.received.append(total)  # type: ignore[attr-defined]


def _serve(handler: type[socketserver.BaseRequestHandler]) -> Iterator[socketserver.TCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def echo() -> Iterator[int]:
    for server in _serve(_EchoHandler):
        yield server.server_address[1]


@pytest.fixture
def sink() -> Iterator[socketserver.TCPServer]:
    yield from _serve(_SinkHandler)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def _recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_an_echo_round_trip_takes_at_least_twice_the_delay(echo: int) -> None:
    with LatencyProxy("127.0.0.1", echo, delay=DELAY) as proxy, _connect(proxy.port) as sock:
        for _ in range(3):
            started = time.monotonic()
            sock.sendall(b"ping")
            assert _recv_exactly(sock, 4) == b"ping"
            assert time.monotonic() - started >= 2 * DELAY


def test_pipelined_chunks_keep_their_order_and_their_delays_overlap(echo: int) -> None:
    """Ten chunks sent at once come back in order, one RTT later, not ten RTTs later."""
    chunks = [f"chunk-{i:02d};".encode() for i in range(10)]
    with LatencyProxy("127.0.0.1", echo, delay=DELAY) as proxy, _connect(proxy.port) as sock:
        started = time.monotonic()
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(0.001)  # separate reads in the proxy, so separate scheduled chunks
        assert _recv_exactly(sock, sum(map(len, chunks))) == b"".join(chunks)
        elapsed = time.monotonic() - started
    assert elapsed >= 2 * DELAY
    # Serialised delays would need >= 10 round trips; this generous bound only rules that out.
    assert elapsed < 10 * 2 * DELAY


def test_eof_is_forwarded_after_the_data(echo: int) -> None:
    with LatencyProxy("127.0.0.1", echo, delay=DELAY) as proxy, _connect(proxy.port) as sock:
        sock.sendall(b"x" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        assert _recv_all(sock) == b"x" * 100_000


@pytest.mark.parametrize("limit", [0, 1, 1000, 65536 + 7])
def test_cut_up_forwards_exactly_n_bytes_to_the_server(
    sink: socketserver.TCPServer, limit: int
) -> None:
    cut = Cut(after_bytes=limit, direction="up")
    with LatencyProxy("127.0.0.1", sink.server_address[1], delay=0.001, cut=cut) as proxy:
        with _connect(proxy.port) as sock:
            with pytest.raises(OSError):  # the proxy closes on us while we keep sending
                for _ in range(100):
                    sock.sendall(b"y" * 10_000)
                    time.sleep(0.005)
            assert _recv_all_or_reset(sock) == b""
        _wait_for(lambda: len(sink.received) == 1)  # type: ignore[attr-defined]
        assert sink.received == [limit]  # type: ignore[attr-defined]
        assert proxy.connections[0].up == limit and proxy.connections[0].cut


def test_cut_down_delivers_exactly_n_bytes_then_closes(echo: int) -> None:
    with LatencyProxy(
        "127.0.0.1", echo, delay=0.001, cut=Cut(after_bytes=5000, direction="down")
    ) as proxy:
        with _connect(proxy.port) as sock:
            sock.sendall(b"z" * 20_000)
            assert _recv_all_or_reset(sock) == b"z" * 5000
        assert proxy.connections[0].down == 5000 and proxy.connections[0].cut


def test_cut_total_counts_both_directions(echo: int) -> None:
    """An echo doubles every byte: a 3,000-byte total budget is 1,500 each way."""
    with LatencyProxy(
        "127.0.0.1", echo, delay=0.001, cut=Cut(after_bytes=3000, direction="total")
    ) as proxy:
        with _connect(proxy.port) as sock:
            received = b""
            for _ in range(10):  # 500 bytes a time, echoed back before the next
                try:
                    sock.sendall(b"t" * 500)
                except OSError:  # cut
                    break
                received += _recv_up_to(sock, 500)
            _wait_for(lambda: proxy.connections[0].cut)
            stats = proxy.connections[0]
        assert stats.cut and stats.up + stats.down == 3000
        assert received == b"t" * 1500


def test_cut_spares_connections_after_the_first_n(echo: int) -> None:
    cut = Cut(after_bytes=10, direction="down", connections=1)
    with LatencyProxy("127.0.0.1", echo, delay=0.001, cut=cut) as proxy:
        with _connect(proxy.port) as first:
            first.sendall(b"a" * 100)
            assert _recv_all_or_reset(first) == b"a" * 10
        with _connect(proxy.port) as second:
            second.sendall(b"b" * 100)
            assert _recv_exactly(second, 100) == b"b" * 100
        assert [c.cut for c in proxy.connections] == [True, False]


def test_stop_is_idempotent_and_frees_the_port(echo: int) -> None:
    proxy = LatencyProxy("127.0.0.1", echo)
    port = proxy.start()
    proxy.stop()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def _recv_all_or_reset(sock: socket.socket) -> bytes:
    """Everything until the close; a reset after it counts as the end too."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _recv_up_to(sock: socket.socket, size: int) -> bytes:
    """Up to `size` bytes, fewer if the connection ends first."""
    data = b""
    try:
        while len(data) < size and (chunk := sock.recv(size - len(data))):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
