"""The benchmark's emulated link (benchmarks/relay.py): bytes kept in order, delay and rate applied, on loopback."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from benchmarks.relay import Relay, parse_link

TIMEOUT = 20.0


async def _echo_server() -> tuple[asyncio.base_events.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _through_relay(link: str, payload: bytes, pings: int = 0) -> tuple[bytes, float, list[float], Relay]:
    """Send ``payload`` through a relay to an echo server; returns the echo, its time, ping RTTs."""
    server, port = await _echo_server()
    relay = Relay(("127.0.0.1", port), parse_link(link))
    rport = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", rport)
        rtts = []
        for _ in range(pings):
            t0 = time.perf_counter()
            writer.write(b"p")
            await writer.drain()
            assert await reader.readexactly(1) == b"p"
            rtts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        echoed = await reader.read(-1)  # until the relay passes on the echo server's EOF
        elapsed = time.perf_counter() - t0
        await sender
        writer.close()
        return echoed, elapsed, rtts, relay
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()


def _run(coro):  # noqa: ANN001, ANN202
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def test_bytes_arrive_intact_and_in_order_both_ways() -> None:
    payload = os.urandom(3 << 20)  # several chunks and several bottleneck buffers' worth in each direction
    echoed, _, _, relay = _run(_through_relay("relay", payload))
    assert echoed == payload
    assert relay.stats.c2s.bytes == relay.stats.s2c.bytes == len(payload)
    assert relay.stats.connections == 1


def test_delay_is_applied_each_way_and_not_per_chunk() -> None:
    delay = 0.03
    payload = os.urandom(2 << 20)  # 32 chunks: a per-chunk delay would take ≥ 32 × 2 × 30 ms ≈ 1.9 s
    echoed, elapsed, rtts, _ = _run(_through_relay("10gbit:30ms", payload, pings=5))
    assert echoed == payload
    assert min(rtts) >= 2 * delay  # one delay each way
    assert max(rtts) < 2 * delay + 0.5
    assert 2 * delay <= elapsed < 2 * delay + 1.0


def test_rate_is_applied_per_direction() -> None:
    rate, size = 40e6, 1 << 20  # 0.21 s per direction at 40 Mbit/s
    payload = os.urandom(size)
    echoed, elapsed, _, relay = _run(_through_relay("40mbit:5ms", payload))
    assert echoed == payload
    serialization = size * 8 / rate
    # the echo overlaps the two directions (full duplex): the payload's time once, plus both delays
    assert elapsed >= serialization + 2 * 0.005
    assert elapsed < 2 * serialization + 2.0
    assert relay.stats.c2s.bytes == relay.stats.s2c.bytes == size


@pytest.mark.parametrize("spec, rate, delay", [("100mbit:20ms", 100e6, 0.02), ("1gbit:1ms", 1e9, 0.001),
                                                ("20mbit:40ms", 20e6, 0.04), ("1.5kbit:2s", 1.5e3, 2.0)])
def test_parse_link(spec: str, rate: float, delay: float) -> None:
    link = parse_link(spec)
    assert (link.rate_bps, link.delay_s, link.direct) == (rate, delay, False)
    assert link.rtt_s == 2 * delay


def test_parse_link_special_and_bad() -> None:
    assert parse_link("loopback").direct and parse_link("relay").rate_bps is None
    for bad in ("100mbit", "fast", "100mbps:20ms", "0mbit:1ms"):
        with pytest.raises(ValueError, match="link"):
            parse_link(bad)
