#!/usr/bin/env python3
"""Signs a message with dkimpy, an independent DKIM implementation.

Usage: dkim_sign.py KEY-PEM DOMAIN SELECTOR MESSAGE-FILE

Writes the message with its DKIM-Signature field in front to standard
output: relaxed/relaxed canonicalization, rsa-sha256, the headers From,
To, Subject, Date and Message-ID signed.
"""

import sys

import dkim

key = open(sys.argv[1], "rb").read()
domain = sys.argv[2].encode()
selector = sys.argv[3].encode()
message = open(sys.argv[4], "rb").read()

field = dkim.sign(
    message,
    selector,
    domain,
    key,
    canonicalize=(b"relaxed", b"relaxed"),
    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    linesep=b"\r\n",
)
sys.stdout.buffer.write(field + message)
