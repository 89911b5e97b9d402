#!/usr/bin/env python3
"""A TCP proxy in front of PostgreSQL that loses the answer to one insert,
for Ferrymail's end-to-end tests: the statement reaches the server and
commits, and the connection dies before its answer comes back, as when a
network path or a proxy fails at the wrong moment.

It reads the frontend protocol (PostgreSQL's "Frontend/Backend Protocol",
Message Formats) on each connection: Parse messages name the statements,
and a Bind of a statement whose text contains `marker`, followed by its
Sync, arms the cut. The first bytes the server sends after that Sync are
not forwarded: both sides are closed. The server has committed by then: in
the extended protocol an implicit transaction commits at Sync, before
ReadyForQuery, and the server holds its replies until it sends that. Only
the first such statement is cut; everything else passes through, so the
client's next connection works.

SSLRequest and GSSENCRequest are answered "N" by the proxy itself, so the
session stays plain text and readable.

Usage: pg_answer_cutter.py JSON-OPTIONS

Options (all required):
  port           where to listen, on 127.0.0.1
  upstream_host, upstream_port
                 the PostgreSQL server
  marker         text of the statement to cut, e.g. "INSERT INTO envelope"
  log            file receiving the line "cut" when the cut is made

Prints "READY" on stdout when listening; stops when stdin closes.
"""

import asyncio
import json
import struct
import sys

opts = json.loads(sys.argv[1])
state = {"cut_made": False}

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


async def pump_client(reader, client_writer, server_writer, conn):
    """Client to server, message by message."""
    # The untyped start-up packets: length, then a code.
    while True:
        head = await reader.readexactly(8)
        length, code = struct.unpack("!ii", head)
        rest = await reader.readexactly(length - 8)
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            client_writer.write(b"N")
            await client_writer.drain()
            continue
        server_writer.write(head + rest)
        break
    statements = {}
    while True:
        kind = await reader.readexactly(1)
        length = struct.unpack("!i", await reader.readexactly(4))[0]
        body = await reader.readexactly(length - 4)
        if kind == b"P":
            name, _, rest = body.partition(b"\0")
            query = rest.partition(b"\0")[0]
            statements[name] = query
        elif kind == b"B":
            statement = body.split(b"\0", 2)[1]
            if (
                not state["cut_made"]
                and opts["marker"].encode() in statements.get(statement, b"")
            ):
                conn["armed"] = True
        elif kind == b"S" and conn["armed"]:
            conn["cutting"] = True
            state["cut_made"] = True
        server_writer.write(kind + struct.pack("!i", length) + body)
        await server_writer.drain()


async def pump_server(reader, client_writer, conn):
    """Server to client, unless this connection's answer is to be lost."""
    while True:
        data = await reader.read(65536)
        if not data:
            return
        if conn["cutting"]:
            with open(opts["log"], "a") as f:
                f.write("cut\n")
            return
        client_writer.write(data)
        await client_writer.drain()


async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection(
            opts["upstream_host"], opts["upstream_port"]
        )
    except OSError:
        client_writer.close()
        return
    conn = {"armed": False, "cutting": False}
    tasks = [
        asyncio.ensure_future(
            pump_client(client_reader, client_writer, server_writer, conn)
        ),
        asyncio.ensure_future(pump_server(server_reader, client_writer, conn)),
    ]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    for w in (client_writer, server_writer):
        try:
            w.transport.abort()
        except Exception:
            pass


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", opts["port"])
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


asyncio.run(main())
