#!/usr/bin/env python3
"""An independent SMTP client for Ferrymail's end-to-end tests: Python's own
smtplib and ssl modules, driven by tests/python_smtplib.rs.

Usage: smtplib_client.py MODE HOST PORT

Modes:
  dsn        send with RET/ENVID on MAIL and NOTIFY/ORCPT on RCPT
  utf8       send to/from UTF-8 addresses with SMTPUTF8 (sendmail and
             send_message), then check that without SMTPUTF8 they get 553 5.6.7
  starttls   STARTTLS (certificate not verified: it is self-signed), then send
  inject     CVE-2011-0411: pipeline commands after STARTTLS in the clear and
             check that none of them is answered after the TLS handshake

Prints one "ok: ..." line per check and exits 0; on a failed check prints
"FAIL: ..." and exits 1. Every socket operation has a timeout.
"""

import socket
import smtplib
import ssl
import sys
from email.message import EmailMessage

TIMEOUT = 20


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def expect(cond, msg):
    if not cond:
        fail(msg)
    ok(msg)


def no_verify_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def mode_dsn(host, port):
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as s:
        code, _ = s.ehlo("python.test")
        expect(code == 250, "EHLO 250")
        expect(s.has_extn("dsn"), "server offers DSN")
        msg = (
            b"From: <dsn-sender@example.org>\r\n"
            b"To: <dsn-rcpt@local.test>\r\n"
            b"Subject: dsn parameters\r\n\r\nbody\r\n"
        )
        refused = s.sendmail(
            "dsn-sender@example.org",
            ["dsn-rcpt@local.test"],
            msg,
            mail_options=["RET=HDRS", "ENVID=env-123"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig@example.net"],
        )
        expect(refused == {}, f"no recipient refused ({refused})")


def mode_utf8(host, port):
    sender = "josé@example.org"
    rcpt = "用户@local.test"
    body = "From: <josé@example.org>\r\nTo: <用户@local.test>\r\nSubject: ünïcödé\r\n\r\nGrüße, 你好\r\n"
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as s:
        s.ehlo("python.test")
        expect(s.has_extn("smtputf8"), "server offers SMTPUTF8")
        expect(s.has_extn("8bitmime"), "server offers 8BITMIME")
        refused = s.sendmail(
            sender,
            [rcpt],
            body.encode("utf-8"),
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
        expect(refused == {}, "sendmail with SMTPUTF8 accepted")

    # send_message adds SMTPUTF8 by itself when an address is not ASCII.
    m = EmailMessage()
    m["From"] = "José <josé@example.org>"
    m["To"] = "用户 <用户@local.test>"
    m["Subject"] = "send_message ünïcödé"
    m.set_content("Grüße, 你好\n")
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as s:
        refused = s.send_message(m)
        expect(refused == {}, "send_message with UTF-8 addresses accepted")

    # Without SMTPUTF8: make smtplib put the UTF-8 bytes on the wire anyway
    # (normally it refuses to encode them), and expect 553 5.6.7.
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as s:
        s.ehlo("python.test")
        s.command_encoding = "utf-8"
        code, text = s.mail(sender)
        expect(
            code == 553 and text.startswith(b"5.6.7"),
            f"UTF-8 sender without SMTPUTF8 refused 553 5.6.7 (got {code} {text!r})",
        )
        code, text = s.mail("ascii@example.org")
        expect(code == 250, f"ASCII sender accepted after the refusal (got {code} {text!r})")
        code, text = s.rcpt(rcpt)
        expect(
            code == 553 and text.startswith(b"5.6.7"),
            f"UTF-8 recipient without SMTPUTF8 refused 553 5.6.7 (got {code} {text!r})",
        )
        code, text = s.rset()
        expect(code == 250, "RSET")


def mode_starttls(host, port):
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as s:
        s.ehlo("python.test")
        expect(s.has_extn("starttls"), "server offers STARTTLS")
        code, text = s.starttls(context=no_verify_context())
        expect(code == 220, f"STARTTLS 220 (got {code} {text!r})")
        expect(isinstance(s.sock, ssl.SSLSocket), "socket is TLS now")
        ok(f"negotiated {s.sock.version()} {s.sock.cipher()[0]}")
        s.ehlo("python.test")
        expect(not s.has_extn("starttls"), "STARTTLS no longer offered inside TLS")
        refused = s.sendmail(
            "tls-sender@example.org",
            ["tls-rcpt@local.test"],
            b"Subject: over tls\r\n\r\nsecret body\r\n",
        )
        expect(refused == {}, "message accepted over TLS")


class LineReader:
    """Reads CRLF lines from a socket one byte at a time (never past a line)."""

    def __init__(self, sock):
        self.sock = sock

    def line(self):
        buf = bytearray()
        while not buf.endswith(b"\r\n"):
            b = self.sock.recv(1)
            if not b:
                fail(f"connection closed while reading a line (got {bytes(buf)!r})")
            buf += b
        return bytes(buf)

    def reply(self):
        lines = []
        while True:
            ln = self.line()
            lines.append(ln)
            if ln[3:4] != b"-":
                return int(ln[:3]), lines


def mode_inject(host, port):
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    raw.settimeout(TIMEOUT)
    r = LineReader(raw)
    code, _ = r.reply()
    expect(code == 220, "greeting")
    raw.sendall(b"EHLO inject.test\r\n")
    code, lines = r.reply()
    expect(code == 250 and any(b"STARTTLS" in l for l in lines), "EHLO offers STARTTLS")

    # The attack: commands pipelined after STARTTLS, in the clear. A vulnerable
    # server reads them into its buffer and answers them after the handshake,
    # as if the client had sent them over TLS. HELP gives a distinctive 214.
    raw.sendall(b"STARTTLS\r\nRSET\r\nHELP\r\n")
    code, lines = r.reply()
    expect(code == 220, f"STARTTLS answered 220 ({lines})")
    # Nothing else may arrive in the clear before our handshake.
    raw.settimeout(0.5)
    try:
        extra = raw.recv(256, socket.MSG_PEEK)
        fail(f"server sent plaintext after the 220: {extra!r}")
    except socket.timeout:
        ok("no plaintext after the 220")
    raw.settimeout(TIMEOUT)

    tls = no_verify_context().wrap_socket(raw, server_hostname="mx.ferry.test")
    ok(f"handshake done: {tls.version()}")
    t = LineReader(tls)

    tls.sendall(b"NOOP\r\n")
    code, lines = t.reply()
    expect(code == 250, f"first reply over TLS is NOOP's 250 (got {lines})")
    # A vulnerable server would have two replies queued here (RSET's 250 and
    # HELP's 214): VRFY's 252 must come next, and nothing else be pending.
    tls.sendall(b"VRFY nobody\r\n")
    code, lines = t.reply()
    expect(code == 252, f"second reply over TLS is VRFY's 252 (got {lines})")
    tls.settimeout(0.5)
    try:
        extra = tls.recv(256)
        fail(f"unexpected extra data over TLS: {extra!r}")
    except (socket.timeout, ssl.SSLWantReadError):
        ok("no stale replies pending")
    tls.settimeout(TIMEOUT)

    # RFC 3207 §4.2: the session state is reset; EHLO is required again.
    tls.sendall(b"MAIL FROM:<x@example.org>\r\n")
    code, lines = t.reply()
    expect(code == 503 and lines[-1][4:9] == b"5.5.1", f"MAIL before EHLO after TLS is 503 5.5.1 (got {lines})")
    tls.sendall(b"EHLO inject.test\r\n")
    code, lines = t.reply()
    expect(code == 250 and not any(b"STARTTLS" in l for l in lines), "EHLO over TLS, no STARTTLS offered")
    tls.sendall(b"MAIL FROM:<x@example.org>\r\n")
    code, lines = t.reply()
    expect(code == 250, f"MAIL after EHLO over TLS (got {lines})")
    tls.sendall(b"QUIT\r\n")
    code, lines = t.reply()
    expect(code == 221, "QUIT")
    tls.close()


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    modes = {
        "dsn": mode_dsn,
        "utf8": mode_utf8,
        "starttls": mode_starttls,
        "inject": mode_inject,
    }
    if mode not in modes:
        print(f"unknown mode {mode}", file=sys.stderr)
        sys.exit(2)
    try:
        modes[mode](host, port)
    except (smtplib.SMTPException, OSError, ssl.SSLError) as e:
        fail(f"{type(e).__name__}: {e}")
    print("done", flush=True)


if __name__ == "__main__":
    main()
