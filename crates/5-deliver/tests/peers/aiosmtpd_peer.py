#!/usr/bin/env python3
"""A next hop for Ferrymail's delivery tests, built on aiosmtpd.

Usage: aiosmtpd_peer.py JSON-OPTIONS

Options (all optional but "port" and "record"):
  port            TCP port
  host            address to listen on (default 127.0.0.1)
  record          file receiving one JSON line per completed transaction
  lmtp            speak LMTP (LHLO, one reply per recipient after DATA)
  smtputf8        advertise SMTPUTF8
  size            advertise SIZE with this limit (aiosmtpd enforces it)
  tls_cert, tls_key   PEM files; with "implicit_tls" TLS from the first
                  byte, else STARTTLS is offered
  implicit_tls    see above
  starttls_reply  STARTTLS is offered but answered with this reply (e.g.
                  "454 4.7.0 TLS not available due to temporary reason")
  tls_max_version the highest TLS version the server will speak, e.g.
                  "TLSv1" (an old server no modern client can talk to)
  auth            {"user": U, "password": P}: AUTH PLAIN/LOGIN offered
  auth_require_tls  aiosmtpd's auth_require_tls (default true)
  auth_exclude    mechanisms not to offer, e.g. ["PLAIN"]
  reject_rcpt     {address: reply}: RCPT TO of address gets that reply
  data_cmd_reply  the DATA command gets this reply instead of 354 (a broken
                  next hop, e.g. "250 2.0.0 OK")
  mail_close_after  after this many transactions on one connection, MAIL
                  gets "421 4.3.2 Service shutting down" and the connection
                  closes (a next hop that shuts a pooled connection down)
  data_reply      {address: reply}: LMTP reply after DATA for that
                  recipient (default "250 2.0.0 <address> delivered")

Prints "READY" on stdout when listening; stops when stdin closes.
"""

import asyncio
import json
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

opts = json.loads(sys.argv[1])


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = opts.get("reject_rcpt", {}).get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or b""
        record = {
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "rcpt_options": envelope.rcpt_options,
            "data_hex": content.hex(),
            "tls": session.ssl is not None,
            "auth": (session.auth_data.login.decode() if session.authenticated
                     and isinstance(session.auth_data, LoginPassword) else None),
            "helo": session.host_name,
        }
        with open(opts["record"], "a") as f:
            f.write(json.dumps(record) + "\n")
        if opts.get("lmtp"):
            replies = opts.get("data_reply", {})
            return "\r\n".join(
                replies.get(r, f"250 2.0.0 <{r}> delivered") for r in envelope.rcpt_tos)
        return "250 2.0.0 OK queued"


def authenticator(server, session, envelope, mechanism, auth_data):
    want = opts["auth"]
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login.decode() == want["user"]
          and auth_data.password.decode() == want["password"])
    # handled=False: aiosmtpd then answers a failure with 535 itself.
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class QuirkySMTP(SMTP):
    """aiosmtpd's SMTP with the misbehaviours the options ask for."""

    async def smtp_MAIL(self, arg):
        limit = opts.get("mail_close_after")
        if limit is not None:
            self.mails_seen = getattr(self, "mails_seen", 0) + 1
            if self.mails_seen > limit:
                await self.push("421 4.3.2 Service shutting down")
                self.transport.close()
                return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg):
        if opts.get("data_cmd_reply"):
            await self.push(opts["data_cmd_reply"])
            return
        await super().smtp_DATA(arg)


class RefusingStarttls(QuirkySMTP):
    """Offers STARTTLS and then refuses it (RFC 3207 §4's 454)."""

    async def smtp_STARTTLS(self, arg):
        await self.push(opts["starttls_reply"])


class PeerController(Controller):
    def factory(self):
        if opts.get("lmtp"):
            cls = LMTP
        elif opts.get("starttls_reply"):
            cls = RefusingStarttls
        else:
            cls = QuirkySMTP
        return cls(self.handler, **self.SMTP_kwargs)


def main():
    kwargs = {
        "hostname": opts.get("host", "127.0.0.1"),
        "port": opts["port"],
        "server_hostname": "peer.ferry.test",
        "enable_SMTPUTF8": bool(opts.get("smtputf8")),
        "data_size_limit": opts.get("size") or 0,
    }
    if opts.get("tls_cert"):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(opts["tls_cert"], opts["tls_key"])
        if opts.get("tls_max_version"):
            ctx.maximum_version = getattr(ssl.TLSVersion, opts["tls_max_version"])
        if opts.get("implicit_tls"):
            kwargs["ssl_context"] = ctx
        else:
            kwargs["tls_context"] = ctx
            kwargs["require_starttls"] = False
    if opts.get("auth"):
        kwargs["authenticator"] = authenticator
        kwargs["auth_require_tls"] = opts.get("auth_require_tls", True)
        if opts.get("auth_exclude"):
            kwargs["auth_exclude_mechanism"] = opts["auth_exclude"]
    controller = PeerController(Handler(), **kwargs)
    controller.start()
    print("READY", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
