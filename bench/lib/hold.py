"""Holds idle keep-alive connections: opens N connections to HOST:PORT (at most
IN_FLIGHT opening at once), makes one request on each and reads its response, prints
how many it holds once every connection is done, then keeps them open until killed.
A connection the server (or the kernel) drops while others open is tried again, twice:
the state measured is connections held, not a connect storm.

    python3 bench/lib/hold.py HOST PORT N IN_FLIGHT
"""
import asyncio
import resource
import sys

host, port, n, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
held = []


async def attempt():
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(REQUEST)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
    except BaseException:
        writer.close()
        raise
    return writer


async def one(limit):
    async with limit:
        for tries in range(3):
            try:
                held.append(await attempt())
                return
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                error = e
                await asyncio.sleep(0.1)
        print(f"a connection failed three times: {error}", file=sys.stderr)


async def main():
    limit = asyncio.Semaphore(in_flight)
    await asyncio.gather(*(one(limit) for _ in range(n)))
    print(len(held), flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
