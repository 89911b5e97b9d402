"""SMTP submission over implicit TLS (RFC 8314 §3.3) with Python's
smtplib.SMTP_SSL, an independent client: TLS from the first byte
(certificate not verified: the server's is self-signed), EHLO, AUTH PLAIN,
one message. Prints JSON: the TLS version, what EHLO offered, the AUTH
reply and the reply to the message.

usage: smtps_client.py PORT USER PASSWORD
"""

import json
import smtplib
import ssl
import sys

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}
s = smtplib.SMTP_SSL("127.0.0.1", port, timeout=20, context=ssl._create_unverified_context())
s.ehlo("smtps.test")
out["tls"] = s.sock.version()
out["starttls"] = s.has_extn("starttls")
out["auth"] = (s.esmtp_features.get("auth") or "").strip()
code, text = s.login(user, password)
out["login"] = [code, text.decode()]
refused = s.sendmail(
    user + "@example.org",
    ["someone@remote.test"],
    b"From: " + user.encode() + b"@example.org\r\nSubject: over smtps\r\n\r\nbody\r\n",
)
out["refused"] = refused
s.quit()
print(json.dumps(out))
