#!/usr/bin/env python3
"""A private Postfix 3.7 instance between Ferrymail and a final sink, for
round_trip_through_postfix.rs.

Usage: postfix_hop.py PORT RELAY_PORT [JSON-MAIN-CF]

Postfix's smtpd listens on 127.0.0.1:PORT (offering PIPELINING, SIZE,
8BITMIME, DSN, SMTPUTF8 and CHUNKING) and relays everything to
127.0.0.1:RELAY_PORT. Built on bench/lib/postfix.py's TempPostfix (see
bench/README.md for the gotchas it handles); JSON-MAIN-CF is an object of
extra main.cf settings. master.cf also has Postfix's LMTP client, so that
`default_transport = lmtp:inet:127.0.0.1:PORT` in JSON-MAIN-CF hands the
mail on over LMTP instead (lmtp_listener_queues_and_answers_per_recipient.rs). Prints "READY <maillog>" when up; stops Postfix
when stdin closes or on SIGTERM. Needs root, like every private Postfix.
"""

import json
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "bench", "lib"))
from postfix import TempPostfix  # noqa: E402


class HopPostfix(TempPostfix):
    """TempPostfix with the `lmtp` delivery agent in master.cf (unused
    unless a transport names it)."""

    def master_cf(self) -> str:
        return super().master_cf() + \
            "lmtp      unix  -       -       n       -       -       lmtp\n"


def main():
    port, relay_port = int(sys.argv[1]), int(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with HopPostfix(port, relay_to=("127.0.0.1", relay_port),
                     hostname="postfix-hop.ferry.test", extra_main=extra) as pf:
        print(f"READY {pf.log_file}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
