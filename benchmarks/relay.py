"""An emulated network link between two processes: a TCP relay with a rate and a one-way delay.

    python -m benchmarks.relay --target 127.0.0.1:8765 --link 100mbit:20ms [--port 0]

Each connection accepted on ``--port`` is forwarded to ``--target``; each direction is its own FIFO
link (full duplex, as a real link is): a chunk read at time t leaves the link's sender at
``max(t, sender free) + bytes·8 / rate`` and is delivered ``delay`` seconds later. Delivery times
are computed per chunk from its arrival, so the delay is not serialized chunk after chunk: a message
of S bytes arrives S·8/rate + delay after it was sent, as on a real link. What a direction holds
(in the sender's queue and in flight) is bounded (``buffer_bytes``); past it the relay stops reading
and the sender's TCP blocks, as behind a full bottleneck buffer.

Why pacing here and not ``tc qdisc tbf`` on lo: in one network namespace every relayed byte crosses
lo twice (sender → relay, relay → receiver), and both directions share lo's single qdisc, so a tbf
rate would be split between the two legs and the two directions. The relay paces each direction
exactly and independently. The model is ideal (no loss, no TCP slow start over the long path): a
lower bound on what a real link of this rate and delay costs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import sys
import threading
import time
from dataclasses import dataclass, field

CHUNK_BYTES = 64 << 10
_RATE_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class Link:
    """A link's rate (bit/s; None: unlimited) and one-way delay (s); ``direct``: no relay at all."""

    name: str
    rate_bps: float | None = None
    delay_s: float = 0.0
    direct: bool = False

    @property
    def rtt_s(self) -> float:
        return 2 * self.delay_s

    def transfer_seconds(self, nbytes: int) -> float:
        """Time to move ``nbytes`` one way over this link (serialization plus one delay)."""
        return (nbytes * 8 / self.rate_bps if self.rate_bps else 0.0) + self.delay_s


def parse_link(spec: str) -> Link:
    """``loopback`` (direct, no relay), ``relay`` (relay without limits) or ``RATE:DELAY`` such as
    ``100mbit:20ms`` (DELAY is one way: the round trip is twice it)."""
    spec = spec.strip().lower()
    if spec == "loopback":
        return Link("loopback", direct=True)
    if spec == "relay":
        return Link("relay")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit:(\d+(?:\.\d+)?)(s|ms|us)", spec)
    if not m:
        raise ValueError(f"link {spec!r}: expected 'loopback', 'relay' or RATE:DELAY like '100mbit:20ms'")
    rate = float(m[1]) * _RATE_UNITS[m[2]]
    delay = float(m[3]) * _TIME_UNITS[m[4]]
    if rate <= 0 or delay < 0:
        raise ValueError(f"link {spec!r}: the rate must be positive and the delay not negative")
    return Link(spec, rate, delay)


@dataclass
class DirectionStats:
    """Bytes a direction delivered, and how many chunks arrived later than due (relay lag)."""

    bytes: int = 0
    chunks: int = 0
    late_chunks: int = 0
    max_late_s: float = 0.0
    late_s: float = 0.0


@dataclass
class RelayStats:
    c2s: DirectionStats = field(default_factory=DirectionStats)
    s2c: DirectionStats = field(default_factory=DirectionStats)
    connections: int = 0


class _Direction:
    """One direction of one connection: a FIFO of (due time, bytes), bounded in bytes."""

    def __init__(self, link: Link, buffer_bytes: int, stats: DirectionStats) -> None:
        self.link, self.limit, self.stats = link, buffer_bytes, stats
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.held = 0
        self.free_at = 0.0  # when the link's sender has sent everything queued so far
        self.changed = asyncio.Event()

    async def pump_in(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.held >= self.limit:  # a full bottleneck buffer: stop reading, the sender blocks
                self.changed.clear()
                await self.changed.wait()
            data = await reader.read(CHUNK_BYTES)
            now = loop.time()
            if not data:
                self._put(max(now, self.free_at) + self.link.delay_s, None)
                return
            if self.link.rate_bps:
                self.free_at = max(now, self.free_at) + len(data) * 8 / self.link.rate_bps
                due = self.free_at + self.link.delay_s
            else:
                due = now + self.link.delay_s
            self.held += len(data)
            self._put(due, data)

    def _put(self, due: float, data: bytes | None) -> None:
        self.queue.append((due, data))
        self.changed.set()

    async def pump_out(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.changed.clear()
                await self.changed.wait()
            due, data = self.queue.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -2e-3:
                self.stats.late_chunks += 1
                self.stats.late_s -= wait
                self.stats.max_late_s = max(self.stats.max_late_s, -wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            self.held -= len(data)
            self.stats.bytes += len(data)
            self.stats.chunks += 1
            self.changed.set()


class Relay:
    """Listen on ``host:port`` and forward every connection to ``target`` through ``link``."""

    def __init__(self, target: tuple[str, int], link: Link, host: str = "127.0.0.1", port: int = 0,
                 buffer_bytes: int | None = None) -> None:
        self.target, self.link, self.host, self.port = target, link, host, port
        bdp = int((link.rate_bps or 1e9) * link.delay_s / 8)
        self.buffer_bytes = buffer_bytes or 2 * bdp + (4 << 20)  # in flight plus a 4 MiB bottleneck buffer
        self.stats = RelayStats()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        """Start listening; returns the port."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            self._tasks.discard(task)
            return
        c2s = _Direction(self.link, self.buffer_bytes, self.stats.c2s)
        s2c = _Direction(self.link, self.buffer_bytes, self.stats.s2c)
        pumps = [asyncio.create_task(c) for c in (c2s.pump_in(c_reader), c2s.pump_out(s_writer),
                                                  s2c.pump_in(s_reader), s2c.pump_out(c_writer))]
        try:
            # a reset on either side ends the connection; a clean EOF each way ends it too
            await asyncio.gather(*pumps)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a reset on either side, or the relay closing
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (c_writer, s_writer):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
            self._tasks.discard(task)


class RelayThread:
    """Relays running on an event loop in a background thread (for a harness that blocks on processes).

    >>> with RelayThread(("127.0.0.1", 8765), [parse_link("100mbit:20ms")]) as rt:   # doctest: +SKIP
    ...     port = rt.ports[0]
    """

    def __init__(self, target: tuple[str, int], links: list[Link], host: str = "127.0.0.1") -> None:
        self.relays = [Relay(target, link, host) for link in links]
        self.ports: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="relay")

    def __enter__(self) -> RelayThread:
        self._thread.start()
        self.ports = [asyncio.run_coroutine_threadsafe(r.start(), self._loop).result(10) for r in self.relays]
        return self

    def __exit__(self, *exc: object) -> None:
        for r in self.relays:
            asyncio.run_coroutine_threadsafe(r.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def main(argv: list[str] | None = None) -> int:
    """Run one relay until interrupted; prints ``relay listening on HOST:PORT``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.relay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--link", default="relay", help="RATE:DELAY (one way), e.g. 100mbit:20ms; 'relay': no limits")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    link = parse_link(args.link)
    if link.direct:
        ap.error("'loopback' means no relay; give RATE:DELAY or 'relay'")

    async def run() -> None:
        relay = Relay((host, int(port)), link, args.host, args.port)
        print(f"relay listening on {args.host}:{await relay.start()}", flush=True)
        start = time.monotonic()
        try:
            await asyncio.Event().wait()
        finally:
            await relay.close()
            print(f"{relay.stats} after {time.monotonic() - start:.1f} s", file=sys.stderr)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
