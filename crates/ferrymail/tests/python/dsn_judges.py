#!/usr/bin/env python3
"""Independent judges of one delivery status notification made by Ferrymail:

* Python's email package: the RFC 6522 multipart/report structure and every
  RFC 3464 field the DSN issue lists (RFC 6533 types for SMTPUTF8 mail);
* flufl.bounce: failed recipients come out as permanent failures, delayed
  ones as temporary, and success notices as neither;
* dkimpy: every DKIM-Signature verifies, with the test public keys handed
  over through dnsfunc (no DNS).

Usage: dsn_judges.py DSN-FILE EXPECT-JSON

EXPECT-JSON:
  kind            "failure" | "delay" | "success"
  utf8            the original used SMTPUTF8 (RFC 6533 types expected)
  reporting_mta   server.hostname
  from, to        header From and To addresses
  envid           ENVID, or null when none was given
  returned        "full" | "headers"
  returned_subject  the original's Subject (found in the returned part)
  body_marker     text only in the original's body: present when "full",
                  absent when "headers"
  too_large       the text part must say the message was too large
  recipients      [{final, original (ORCPT "type;addr" or null), action,
                    status (exact, or null), status_class ("2"/"4"/"5"),
                    remote_mta (host or null), diagnostic (substring of the
                    Diagnostic-Code, or null for none), will_retry (bool)}]
  flufl           {"permanent": [addr...], "temporary": [addr...]}
  dkim            {"SELECTOR._domainkey.DOMAIN": "v=DKIM1; k=...; p=..."}
  dkim_count      number of DKIM-Signature fields expected

Prints one "ok: ..." line per check and "done" at the end; exits 1 with
"FAIL: ..." on the first failed check.
"""

import email
import email.parser
import email.utils
import json
import re
import sys
from datetime import datetime, timezone

import dkim
from flufl.bounce import all_failures

raw = open(sys.argv[1], "rb").read()
want = json.loads(sys.argv[2])


def fail(what):
    print(f"FAIL: {what}")
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)
    print(f"ok: {what}")


def date(value, what):
    try:
        d = email.utils.parsedate_to_datetime(value)
    except Exception as e:  # noqa: BLE001 - any parse error fails the judge
        fail(f"{what} is not an RFC 5322 date: {value!r} ({e})")
    check(d.tzinfo is not None, f"{what} has a zone: {value}")
    return d


now = datetime.now(timezone.utc)

# --------------------------------------------------------------- structure
msg = email.message_from_bytes(raw)
check(not msg.defects, f"no defects at the top: {msg.defects}")
check(msg.get_content_type() == "multipart/report", "multipart/report (RFC 6522)")
check(msg.get_param("report-type") == "delivery-status", "report-type=delivery-status")
check(msg["MIME-Version"] == "1.0", "MIME-Version: 1.0")
check(email.utils.parseaddr(msg["From"])[1].lower() == want["from"].lower(),
      f"From is {want['from']}: {msg['From']}")
if want["utf8"]:
    # RFC 6532: raw UTF-8 in the header; compat32 hands it back as an
    # unknown-8bit Header, so read the field with the header parser.
    top = email.parser.HeaderParser().parsestr(raw.split(b"\r\n\r\n", 1)[0].decode("utf-8"))
    to = email.utils.parseaddr(top["To"])[1]
else:
    to = email.utils.parseaddr(msg["To"])[1]
check(to == want["to"], f"To is the original sender {want['to']}: {msg['To']}")
check(bool(msg["Subject"]), f"a Subject: {msg['Subject']}")
check(re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", msg["Message-ID"] or "") is not None,
      f"a Message-ID: {msg['Message-ID']}")
d = date(msg["Date"], "Date")
check(abs((now - d).total_seconds()) < 600, "Date is now")
check((msg["Auto-Submitted"] or "").strip() == "auto-replied", "Auto-Submitted: auto-replied (RFC 3834)")

parts = msg.get_payload()
check(isinstance(parts, list) and len(parts) == 3, f"three parts: {[p.get_content_type() for p in parts]}")
for p in parts:
    check(not p.defects, f"no defects in {p.get_content_type()}: {p.defects}")

text = parts[0]
check(text.get_content_type() == "text/plain", "part 1 is text/plain, for people")
human = text.get_payload(decode=True).decode(text.get_content_charset() or "us-ascii")
for r in want["recipients"]:
    check(r["final"] in human, f"the text names {r['final']}")
if want.get("too_large"):
    check("bytes, more than the" in human and "only its headers" in human,
          "the text says the message was too large to return")

status_type = "message/global-delivery-status" if want["utf8"] else "message/delivery-status"
status = parts[1]
check(status.get_content_type() == status_type, f"part 2 is {status_type}")


def raw_parts(message_bytes, boundary):
    """The raw bodies of the top-level parts (for the RFC 6533 types, which
    the email package treats as generic message/* parts)."""
    delim = b"\r\n--" + boundary.encode()
    chunks = (b"\r\n" + message_bytes.split(b"\r\n\r\n", 1)[1]).split(delim)[1:-1]
    return [c.split(b"\r\n\r\n", 1)[1] for c in chunks]


if want["utf8"]:
    # Per-message and per-recipient blocks, parsed with the email package's
    # header parser (RFC 6533 §6.1: the same syntax, in UTF-8).
    body = raw_parts(raw, msg.get_boundary())[1].decode("utf-8")
    blocks = [email.parser.HeaderParser().parsestr(b.strip("\r\n") + "\r\n")
              for b in re.split(r"\r\n\r\n", body) if b.strip()]
else:
    # The email package parses message/delivery-status itself into blocks.
    blocks = status.get_payload()
check(len(blocks) == 1 + len(want["recipients"]),
      f"one per-message block and {len(want['recipients'])} recipient block(s): {len(blocks)}")

per_message = blocks[0]
check(per_message["Reporting-MTA"] == f"dns; {want['reporting_mta']}",
      f"Reporting-MTA: {per_message['Reporting-MTA']}")
arrival = date(per_message["Arrival-Date"], "Arrival-Date")
check(arrival <= now, "Arrival-Date is in the past")
if want["envid"] is None:
    check(per_message["Original-Envelope-Id"] is None, "no Original-Envelope-Id without ENVID")
else:
    check(per_message["Original-Envelope-Id"] == want["envid"],
          f"Original-Envelope-Id is the ENVID: {per_message['Original-Envelope-Id']}")


def final_address(value):
    addr_type, _, addr = value.partition(";")
    return addr_type.strip().lower(), addr.strip()


by_final = {}
for b in blocks[1:]:
    check(b["Final-Recipient"] is not None, "every recipient block has Final-Recipient")
    by_final[final_address(b["Final-Recipient"])[1]] = b
for r in want["recipients"]:
    b = by_final.get(r["final"])
    check(b is not None, f"a block for {r['final']}")
    addr_type, _ = final_address(b["Final-Recipient"])
    check(addr_type in (("rfc822", "utf-8") if want["utf8"] else ("rfc822",)),
          f"Final-Recipient type {addr_type}")
    if r["original"] is None:
        check(b["Original-Recipient"] is None, f"{r['final']}: no Original-Recipient without ORCPT")
    else:
        check(b["Original-Recipient"] == r["original"],
              f"{r['final']}: Original-Recipient {b['Original-Recipient']}")
    check(b["Action"] == r["action"], f"{r['final']}: Action {b['Action']}")
    st = b["Status"] or ""
    check(re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", st) is not None, f"{r['final']}: Status {st} is RFC 3463")
    check(st.startswith(r["status_class"] + "."), f"{r['final']}: Status class {r['status_class']}")
    if r.get("status"):
        check(st == r["status"], f"{r['final']}: Status is {r['status']}")
    if r["remote_mta"] is None:
        check(b["Remote-MTA"] is None, f"{r['final']}: no Remote-MTA")
    else:
        check(b["Remote-MTA"] == f"dns; {r['remote_mta']}", f"{r['final']}: Remote-MTA {b['Remote-MTA']}")
    diag = b["Diagnostic-Code"]
    if r["diagnostic"] is None:
        check(diag is None, f"{r['final']}: no Diagnostic-Code")
    else:
        diag = re.sub(r"\r?\n[ \t]+", " ", diag)
        check(diag.lower().startswith("smtp;"), f"{r['final']}: Diagnostic-Code type smtp: {diag}")
        check(r["diagnostic"] in diag, f"{r['final']}: Diagnostic-Code has {r['diagnostic']!r}: {diag}")
    last = date(b["Last-Attempt-Date"], f"{r['final']}: Last-Attempt-Date")
    check(arrival <= last <= now, f"{r['final']}: Last-Attempt-Date between arrival and now")
    if r["will_retry"]:
        until = date(b["Will-Retry-Until"] or "", f"{r['final']}: Will-Retry-Until")
        check(until > last, f"{r['final']}: Will-Retry-Until after the last attempt")
    else:
        check(b["Will-Retry-Until"] is None, f"{r['final']}: no Will-Retry-Until")

returned = parts[2]
if want["returned"] == "full":
    rtype = "message/global" if want["utf8"] else "message/rfc822"
    check(returned.get_content_type() == rtype, f"part 3 is {rtype}")
else:
    rtype = "message/global-headers" if want["utf8"] else "text/rfc822-headers"
    check(returned.get_content_type() == rtype, f"part 3 is {rtype}")
check((returned["Content-Transfer-Encoding"] or "7bit").lower() in ("7bit", "8bit"),
      "the returned part is not encoded (RFC 2046 5.2.1)")
returned_raw = raw_parts(raw, msg.get_boundary())[2]
check(("Subject: " + want["returned_subject"]).encode() in returned_raw,
      "the returned part has the original's Subject")
if want["returned"] == "full":
    check(want["body_marker"].encode() in returned_raw, "the whole message is returned")
    if not want["utf8"]:
        inner = returned.get_payload()[0]
        check(inner["Subject"] == want["returned_subject"], "the email package reads the returned message")
else:
    check(want["body_marker"].encode() not in returned_raw, "only the headers are returned")

# ------------------------------------------------------------ flufl.bounce
temporary, permanent = all_failures(email.message_from_bytes(raw))
got = {"permanent": sorted(a.decode() for a in permanent),
       "temporary": sorted(a.decode() for a in temporary)}
expect = {k: sorted(v) for k, v in want["flufl"].items()}
check(got == expect, f"flufl.bounce: {got} (expected {expect})")

# ----------------------------------------------------------------- dkimpy
sigs = msg.get_all("DKIM-Signature") or []
check(len(sigs) == want["dkim_count"], f"{want['dkim_count']} DKIM-Signature(s): {len(sigs)}")


def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    record = want["dkim"].get(name.rstrip("."))
    return record.encode() if record else None


for i in range(len(sigs)):
    d = dkim.DKIM(raw)
    ok = d.verify(idx=i, dnsfunc=dnsfunc)
    check(ok, f"dkimpy verifies signature {i + 1} ({d.domain.decode()}, {d.signature_fields.get(b'a', b'').decode()})")

print("done")
