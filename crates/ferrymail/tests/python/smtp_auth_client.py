"""SMTP AUTH from Python's smtplib, an independent client: over STARTTLS
(certificate not verified: the server's is self-signed), logs in with the
given mechanism, then tries to relay one message. Prints one JSON object:
what EHLO offered before and after TLS, the AUTH outcome (code and text,
or the SMTPAuthenticationError's), and the reply to the relayed message.

usage: smtp_auth_client.py PORT MECHANISM USER PASSWORD
"""

import json
import smtplib
import ssl
import sys

port, mechanism, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
out = {}
s = smtplib.SMTP("127.0.0.1", port, timeout=20)
s.ehlo("smtplib.test")
# smtplib keeps the text after the keyword with its leading space.
offered = lambda: (s.esmtp_features.get("auth") or "").strip() or None
out["auth_before_tls"] = offered()
s.starttls(context=ssl._create_unverified_context())
s.ehlo("smtplib.test")
out["auth_after_tls"] = offered()
s.user, s.password = user, password
try:
    if mechanism == "PLAIN":
        code, text = s.auth("PLAIN", s.auth_plain)
    else:
        # Without an initial response: the server asks for each field.
        code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    out["auth"] = [code, text.decode()]
except smtplib.SMTPAuthenticationError as e:
    out["auth"] = [e.smtp_code, e.smtp_error.decode()]
try:
    refused = s.sendmail(
        user + "@example.org",
        ["someone@remote.test"],
        b"From: " + user.encode() + b"@example.org\r\nTo: someone@remote.test\r\n"
        b"Subject: via smtplib " + mechanism.encode() + b"\r\n\r\nbody\r\n",
    )
    out["send"] = [250, json.dumps(refused)]
except smtplib.SMTPRecipientsRefused as e:
    code, text = list(e.recipients.values())[0]
    out["send"] = [code, text.decode()]
except smtplib.SMTPSenderRefused as e:
    out["send"] = [e.smtp_code, e.smtp_error.decode()]
s.quit()
print(json.dumps(out))
