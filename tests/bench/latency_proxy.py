"""A userspace TCP proxy that adds latency, and can cut connections: a WAN in a box.

Every chunk read from one side is scheduled for delivery to the other side ``delay`` seconds
after it arrived, so pipelined traffic stays pipelined (a burst of chunks arrives as a burst,
``delay`` later, in order) instead of the delays adding up chunk after chunk. With the default
12 ms each way, a request/response exchange costs 24 ms more than on loopback.

As a fault injector, `Cut` closes a connection once exactly N bytes have been forwarded,
counted client→server (``up``), server→client (``down``) or both together (``total``).

Library use (the proxy runs its event loop in a daemon thread)::

    with LatencyProxy("127.0.0.1", sshd_port, delay=0.012) as proxy:
        connect_to("127.0.0.1", proxy.port)

    proxy = LatencyProxy("127.0.0.1", sshd_port, cut=Cut(after_bytes=4096, direction="up"))
    port = proxy.start()
    ...
    proxy.stop()

Command line (runs until Ctrl-C)::

    python -m tests.bench.latency_proxy --target 127.0.0.1:2222 --listen-port 2223 --rtt-ms 24
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Literal

Direction = Literal["up", "down", "total"]
READ_SIZE = 64 * 1024
DEFAULT_DELAY = 0.012  # one way: 24 ms round-trip time


@dataclasses.dataclass(frozen=True)
class Cut:
    """Close a connection after exactly `after_bytes` bytes were forwarded.

    Attributes:
        after_bytes: bytes forwarded before the cut (0 cuts before anything is forwarded).
        direction: count ``up`` (client to server), ``down`` (server to client) or ``total``.
        connections: cut only the first this many connections (None: every connection), so a
            test can cut a deploy's connection and let its retry through.
        reset: abort with a TCP RST instead of an orderly close (FIN), like a dead middlebox.
    """

    after_bytes: int
    direction: Direction = "total"
    connections: int | None = None
    reset: bool = False

    def __post_init__(self) -> None:
        if self.after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        if self.direction not in ("up", "down", "total"):
            raise ValueError(f"direction must be up, down or total, not {self.direction!r}")


@dataclasses.dataclass
class ConnectionStats:
    """Bytes delivered on one connection in each direction, and whether the proxy cut it."""

    up: int = 0
    down: int = 0
    cut: bool = False


Side = Literal["up", "down"]
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Budget:
    """Bytes a connection may still forward before its cut, shared by both directions.

    Bytes are *reserved* when read and *delivered* when written: the cut trips only once every
    reserved byte was delivered, so a ``total`` cut never drops bytes still in flight the
    other way.
    """

    def __init__(self, cut: Cut | None, stats: ConnectionStats) -> None:
        self.cut = cut
        self.stats = stats
        self.reserved = {"up": 0, "down": 0}
        self.tripped = asyncio.Event()
        if cut is not None and cut.after_bytes == 0:
            self.tripped.set()

    def _used(self, counts: dict[str, int], side: Side) -> int | None:
        """The count the cut limits for traffic going `side` (None: not limited)."""
        if self.cut is None:
            return None
        if self.cut.direction == "total":
            return counts["up"] + counts["down"]
        return counts[side] if self.cut.direction == side else None

    def exhausted(self, side: Side) -> bool:
        used = self._used(self.reserved, side)
        return used is not None and self.cut is not None and used >= self.cut.after_bytes

    def reserve(self, side: Side, size: int) -> int:
        """Reserve up to `size` bytes going `side`; return how many may be forwarded."""
        used = self._used(self.reserved, side)
        allowed = size
        if used is not None and self.cut is not None:
            allowed = min(size, self.cut.after_bytes - used)
        self.reserved[side] += allowed
        return allowed

    def delivered(self, side: Side, size: int) -> None:
        setattr(self.stats, side, getattr(self.stats, side) + size)
        done = self._used({"up": self.stats.up, "down": self.stats.down}, side)
        if done is not None and self.cut is not None and done >= self.cut.after_bytes:
            self.tripped.set()


class _Link:
    """One proxied connection: two pumps (up, down), each with its own delivery queue."""

    def __init__(
        self, proxy: LatencyProxy, client: Stream, server: Stream, budget: _Budget
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.budget = budget

    async def run(self) -> None:
        """Forward both ways until both sides finished, an error, or the cut."""
        pumps = [
            self.proxy._spawn(self._pump(self.client[0], self.server[1], "up")),
            self.proxy._spawn(self._pump(self.server[0], self.client[1], "down")),
        ]
        cut = self.proxy._spawn(self._cut_when_tripped())
        try:
            await asyncio.gather(*pumps)
        finally:
            cut.cancel()
            for _, writer in (self.client, self.server):
                writer.close()  # after an abort this does nothing; else it flushes first

    def abort(self) -> None:
        for _, writer in (self.client, self.server):
            writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: Side
    ) -> None:
        """Read chunks as they come; each is delivered `delay` after it arrived, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        deliver = self.proxy._spawn(self._deliver(queue, writer, side))
        try:
            while True:
                if self.budget.exhausted(side):
                    queue.put_nowait((loop.time(), None))  # stop; the cut closes the connection
                    break
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    queue.put_nowait((loop.time() + self.proxy.delay, b""))  # EOF, delayed too
                    break
                allowed = self.budget.reserve(side, len(chunk))
                queue.put_nowait((loop.time() + self.proxy.delay, chunk[:allowed]))
        except (ConnectionError, OSError):
            self.abort()  # one side failed: the connection is over both ways
        await deliver

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[float, bytes | None]],
        writer: asyncio.StreamWriter,
        side: Side,
    ) -> None:
        """Write each chunk at its own due time: later chunks' delays overlap this one's."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, chunk = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if chunk is None or self.budget.tripped.is_set():
                    return
                if not chunk:
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                    return
                writer.write(chunk)
                self.budget.delivered(side, len(chunk))
                await writer.drain()
        except (ConnectionError, OSError):
            self.abort()

    async def _cut_when_tripped(self) -> None:
        """Once the last allowed byte was handed to the socket, close both sides."""
        await self.budget.tripped.wait()
        self.budget.stats.cut = True
        for _, writer in (self.client, self.server):
            if self.budget.cut is not None and self.budget.cut.reset:
                writer.transport.abort()
            else:
                writer.close()  # flushes what was written, then FIN


class LatencyProxy:
    """Forward ``listen_host:listen_port`` to ``target_host:target_port`` with added latency.

    Args:
        target_host: where to forward to.
        target_port: port to forward to.
        delay: seconds added in each direction (one way); RTT grows by twice this.
        listen_host: address to listen on.
        listen_port: port to listen on (0: a free port, see `port`).
        cut: optional fault to inject, see `Cut`.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        delay: float = DEFAULT_DELAY,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        cut: Cut | None = None,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.target = (target_host, target_port)
        self.delay = delay
        self.listen = (listen_host, listen_port)
        self.cut = cut
        self.port = 0
        self.connections: list[ConnectionStats] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    # ----- library API: a daemon thread runs the event loop

    def start(self) -> int:
        """Listen and forward in a background thread; return the listening port."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.serve())
            except BaseException as error:  # re-raised in start()'s caller
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self.port

    def stop(self) -> None:
        """Stop listening, drop every connection and join the thread. Idempotent."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> LatencyProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- asyncio API (for callers running their own loop)

    async def serve(self) -> asyncio.Server:
        """Start listening on the running loop; `port` is set when this returns."""
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        stats = ConnectionStats()
        index = len(self.connections)
        self.connections.append(stats)
        try:
            server = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        cut = self.cut
        if cut is not None and cut.connections is not None and index >= cut.connections:
            cut = None
        link = _Link(self, (client_r, client_w), server, _Budget(cut, stats))
        # asyncio logs a cancelled connection callback as an error: end quietly on close().
        with contextlib.suppress(asyncio.CancelledError):
            await self._spawn(link.run())


# --------------------------------------------------------------------------- CLI


def _parse_target(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.latency_proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", type=_parse_target, required=True, help="HOST:PORT")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0, help="0: pick a free port")
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=2000 * DEFAULT_DELAY,
        help="added round-trip time, split evenly between the directions",
    )
    parser.add_argument("--cut-after", type=int, metavar="BYTES", help="cut after BYTES")
    parser.add_argument("--cut-direction", choices=("up", "down", "total"), default="total")
    parser.add_argument(
        "--cut-connections",
        type=int,
        metavar="N",
        help="cut only the first N connections (default: every one)",
    )
    parser.add_argument("--cut-reset", action="store_true", help="cut with RST, not FIN")
    args = parser.parse_args(argv)
    cut = None
    if args.cut_after is not None:
        cut = Cut(args.cut_after, args.cut_direction, args.cut_connections, args.cut_reset)
    proxy = LatencyProxy(
        *args.target,
        delay=args.rtt_ms / 2000,
        listen_host=args.listen_host,
        listen_port=args.listen_port,
        cut=cut,
    )
    return asyncio.run(
        _serve_until_signal(
            proxy,
            lambda: print(
                f"listening on {args.listen_host}:{proxy.port} -> "
                f"{args.target[0]}:{args.target[1]}, "
                f"+{args.rtt_ms:g} ms RTT",
                flush=True,
            ),
        )
    )


async def _serve_until_signal(proxy: LatencyProxy, announce: Callable[[], None]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await proxy.serve()
    announce()
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    server.close()
    await proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
