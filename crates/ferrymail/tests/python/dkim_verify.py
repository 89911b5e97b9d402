#!/usr/bin/env python3
"""Verifies every DKIM-Signature of a message with dkimpy.

Usage: dkim_verify.py MESSAGE-FILE RECORDS-JSON

RECORDS-JSON maps "SELECTOR._domainkey.DOMAIN" to its TXT record, so no
real DNS is asked. Prints one line per signature ("ok d=... a=..." or
"bad ...") and exits 1 if any does not verify.
"""

import json
import sys

import dkim

raw = open(sys.argv[1], "rb").read()
records = json.loads(sys.argv[2])


def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    record = records.get(name.rstrip("."))
    return record.encode() if record else None


count = raw.split(b"\r\n\r\n", 1)[0].lower().count(b"\ndkim-signature:") + (
    1 if raw.lower().startswith(b"dkim-signature:") else 0)
failed = False
for i in range(count):
    d = dkim.DKIM(raw)
    ok = d.verify(idx=i, dnsfunc=dnsfunc)
    fields = d.signature_fields
    line = f"d={fields.get(b'd', b'').decode()} a={fields.get(b'a', b'').decode()}"
    print(("ok " if ok else "bad ") + line)
    failed |= not ok
print(f"signatures: {count}")
sys.exit(1 if failed else 0)
