#!/usr/bin/env python3
"""Where Ferrymail's delivery status notifications are delivered in the DSN
tests: an aiosmtpd server (SMTPUTF8 and 8BITMIME on, DSN not advertised)
that appends one JSON line per transaction to a file, with the message's
raw bytes exactly as received.

Usage: dsn_sink.py PORT RECORD-FILE [RCPT-REPLY]

With RCPT-REPLY (e.g. "550 5.1.1 No such user") it is a failing next hop
instead: every RCPT TO gets that reply. aiosmtpd stands in for smtp-sink
where SMTPUTF8 is needed, which smtp-sink does not announce.
Prints "READY" when listening; stops when stdin closes.
"""

import json
import sys

from aiosmtpd.controller import Controller

port, record = int(sys.argv[1]), sys.argv[2]
rcpt_reply = sys.argv[3] if len(sys.argv) > 3 else None


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if rcpt_reply:
            return rcpt_reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        line = json.dumps({
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "data_hex": (envelope.original_content or b"").hex(),
        }) + "\n"
        # Written before the reply: once the client has its 250, the
        # record is complete.
        with open(record, "a") as f:
            f.write(line)
        return "250 2.0.0 OK recorded"


controller = Controller(Handler(), hostname="127.0.0.1", port=port,
                        server_hostname="dsn-sink.test", enable_SMTPUTF8=True)
controller.start()
print("READY", flush=True)
try:
    sys.stdin.read()
finally:
    controller.stop()
