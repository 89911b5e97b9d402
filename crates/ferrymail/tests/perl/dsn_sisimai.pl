#!/usr/bin/perl
# Sisimai (Debian libsisimai-perl) as a judge of one delivery status
# notification: prints, as JSON, what it makes of the message, one object
# per recipient it found: address, reason, delivery status, action, whether
# it counts as a soft bounce, and which of its parsers recognised the
# message (smtpagent).
#
# Usage: dsn_sisimai.pl FILE   (one raw message; Sisimai reads it as a
# one-message mailbox). Delivered and relayed notices are included
# (delivered => 1); without that option Sisimai drops them by design.
use strict;
use warnings;
use Sisimai;
use JSON::PP;

my $path = shift or die "usage: $0 FILE\n";
my $data = Sisimai->make($path, 'delivered' => 1) || [];
my @out;
for my $d (@$data) {
    push @out, {
        'recipient'      => $d->recipient->address,
        'reason'         => $d->reason,
        'deliverystatus' => $d->deliverystatus,
        'action'         => $d->action,
        'softbounce'     => $d->softbounce + 0,
        'smtpagent'      => $d->smtpagent,
        'diagnosticcode' => $d->diagnosticcode,
        'replycode'      => $d->replycode,
    };
}
print JSON::PP->new->canonical->encode(\@out), "\n";
