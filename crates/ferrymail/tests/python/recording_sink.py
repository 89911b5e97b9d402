#!/usr/bin/env python3
"""A next hop that records every transaction's raw bytes, for Ferrymail's
end-to-end delivery tests. Built on aiosmtpd (an SMTP/LMTP server nobody on
the project wrote); adapted from crates/5-deliver/tests/peers/aiosmtpd_peer.py.

Usage: recording_sink.py JSON-OPTIONS

Options ("port" and "record" are required):
  port          TCP port
  host          address to listen on (default 127.0.0.1)
  tls_cert, tls_key   PEM files: STARTTLS is offered with them, and each
                record says whether the transaction came over TLS ("tls")
  record        file receiving one JSON line per completed transaction:
                {"mail_from", "mail_options", "rcpt_tos", "data_hex", "bdat",
                 "helo"}; data_hex is the message exactly as received (after
                DATA's dot-unstuffing, or the BDAT chunks joined)
  lmtp          speak LMTP (LHLO; one reply per recipient after DATA)
  data_reply    {address: reply}: the LMTP reply after DATA for that
                recipient (default "250 2.0.0 <address> delivered")
  reject_rcpt   {address: reply}: RCPT TO of that address gets that reply
  chunking      advertise CHUNKING (RFC 3030) and take BDAT; aiosmtpd has no
                BDAT of its own, so this file adds the command. The chunks'
                bytes are kept exactly as sent.
  line_limit    longest DATA line accepted, CRLF included (aiosmtpd's
                default is 1001); raise it for messages with bare-LF line
                ends, which aiosmtpd sees as one long line

SMTPUTF8 and 8BITMIME are always advertised. Prints "READY" on stdout when
listening; stops when stdin closes.
"""

import json
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

opts = json.loads(sys.argv[1])


def record(envelope, session, bdat):
    content = envelope.original_content or b""
    line = json.dumps({
        "mail_from": envelope.mail_from,
        "mail_options": envelope.mail_options,
        "rcpt_tos": envelope.rcpt_tos,
        "data_hex": content.hex(),
        "bdat": bdat,
        "helo": session.host_name,
        "tls": session.ssl is not None,
    }) + "\n"
    # One write per transaction, flushed before the reply goes out: when the
    # client has seen 250 the record is on disk.
    with open(opts["record"], "a") as f:
        f.write(line)


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if opts.get("chunking"):
            responses.insert(-1, "250-CHUNKING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = opts.get("reject_rcpt", {}).get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        record(envelope, session, getattr(envelope, "bdat", False))
        if opts.get("lmtp"):
            replies = opts.get("data_reply", {})
            return "\r\n".join(
                replies.get(r, f"250 2.0.0 <{r}> delivered") for r in envelope.rcpt_tos)
        return "250 2.0.0 OK recorded"


class ChunkingSMTP(SMTP):
    """aiosmtpd's SMTP plus BDAT (RFC 3030)."""

    line_length_limit = int(opts.get("line_limit") or 1001)

    async def smtp_BDAT(self, arg):
        parts = (arg or "").split()
        if not parts or not parts[0].isdigit() or len(parts) > 2 or (
                len(parts) == 2 and parts[1].upper() != "LAST"):
            await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
            return
        size, last = int(parts[0]), len(parts) == 2
        # The chunk follows the command whatever happens to it.
        chunk = await self._reader.readexactly(size)
        env = self.envelope
        if not opts.get("chunking"):
            await self.push("500 5.5.1 BDAT not offered")
            return
        if env is None or not env.rcpt_tos:
            await self.push("503 5.5.1 need RCPT first")
            return
        buf = getattr(env, "bdat_buf", None)
        if buf is None:
            buf = env.bdat_buf = bytearray()
        buf += chunk
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        env.original_content = bytes(buf)
        env.content = env.original_content
        env.bdat = True
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)


class LineLimitLMTP(LMTP):
    line_length_limit = int(opts.get("line_limit") or 1001)


class SinkController(Controller):
    def factory(self):
        cls = LineLimitLMTP if opts.get("lmtp") else ChunkingSMTP
        return cls(self.handler, **self.SMTP_kwargs)


def main():
    kwargs = {}
    if opts.get("tls_cert"):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(opts["tls_cert"], opts["tls_key"])
        kwargs = {"tls_context": ctx, "require_starttls": False}
    controller = SinkController(
        Handler(),
        hostname=opts.get("host", "127.0.0.1"),
        port=opts["port"],
        server_hostname="sink.ferry.test",
        enable_SMTPUTF8=True,
        data_size_limit=0,
        **kwargs,
    )
    controller.start()
    print("READY", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
