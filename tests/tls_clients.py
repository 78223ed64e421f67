#!/usr/bin/env python3
"""TLS clients on Python's ssl module, for weft's TLS tests (tests/test_tls_peers.c): a peer
nobody here wrote.

    tls_clients.py load PORT CAFILE CONNS LINES SEED
        CONNS connections at once (asyncio), each sending LINES random lines (any byte but
        newline, lengths 0 to 8 KiB) in random-sized writes while reading the echo, checked
        byte for byte; then a clean close (close_notify both ways).
    tls_clients.py session PORT CAFILE
        one blocking connection: a line echoed, the protocol and cipher printed, then
        unwrap(): our close_notify, and the server's in answer.

Prints "ok ..." and exits 0, or prints why and exits 1."""
import asyncio
import random
import socket
import ssl
import sys


def context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)  # verifies the chain and the host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def one(i, port, ctx, lines, seed):
    rnd = random.Random(seed * 1000003 + i)
    data = bytearray()
    for _ in range(lines):
        n = rnd.choice((0, 1, rnd.randrange(2, 100), rnd.randrange(100, 8193)))
        data += rnd.randbytes(n).replace(b"\n", b"\0") + b"\n"
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost")

    async def send():
        pos = 0
        while pos < len(data):
            k = rnd.choice((1, rnd.randrange(1, 64), rnd.randrange(64, 16384)))
            writer.write(data[pos:pos + k])
            pos += k
            await writer.drain()

    sender = asyncio.create_task(send())
    got = await reader.readexactly(len(data))
    await sender
    if got != data:
        at = next(k for k in range(len(data)) if got[k] != data[k])
        raise AssertionError(f"connection {i}: echo differs at byte {at} of {len(data)}")
    writer.close()  # close_notify, then the server's
    await writer.wait_closed()
    return len(data)


async def load(port, cafile, conns, lines, seed):
    ctx = context(cafile)
    sizes = await asyncio.wait_for(
        asyncio.gather(*(one(i, port, ctx, lines, seed) for i in range(conns))), 600)
    return sum(sizes)


def session(port, cafile):
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    s = context(cafile).wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"hello from python\n")
    back = b""
    while not back.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise AssertionError("connection ended before the echo")
        back += chunk
    if back != b"hello from python\n":
        raise AssertionError(f"echo: {back!r}")
    version, cipher = s.version(), s.cipher()[0]
    s.unwrap().close()  # sends close_notify and waits for the server's
    return f"{version} {cipher}, close_notify both ways"


def main():
    try:
        if sys.argv[1] == "load":
            port, cafile, conns, lines, seed = sys.argv[2:7]
            n = asyncio.run(load(int(port), cafile, int(conns), int(lines), int(seed)))
            print(f"ok {conns} connections, {n} bytes each way, verified")
        elif sys.argv[1] == "session":
            print("ok " + session(int(sys.argv[2]), sys.argv[3]))
        else:
            raise SystemExit(__doc__)
    except Exception as e:  # noqa: BLE001 (any failure is the test's)
        print(f"failed: {type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
