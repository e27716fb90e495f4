#!/usr/bin/perl
# The farm example's app: a FastCGI responder in plain Perl (no modules beyond
# perl-base) that says which node served the request. berth binds the listening
# socket and hands it over as fd 0; this program only accepts on it. Each
# node starts its own processes of it, as the tenant's user.
use strict;
use warnings;

my $served = 0;
open(my $listen, '<&=', 0) or die "fd 0 is not open: $!";

sub read_exact {
    my ($fh, $n) = @_;
    my $buf = '';
    while (length($buf) < $n) {
        my $got = sysread($fh, $buf, $n - length($buf), length($buf));
        return undef unless $got;
    }
    return $buf;
}

sub record {
    my ($type, $id, $content) = @_;
    return pack('CCnnCC', 1, $type, $id, length($content), 0, 0) . $content;
}

sub params {
    my ($data) = @_;
    my %p;
    while (length $data) {
        my @len;
        for (1 .. 2) {
            my $b = ord(substr($data, 0, 1));
            if ($b & 0x80) { push @len, unpack('N', substr($data, 0, 4)) & 0x7fffffff; substr($data, 0, 4) = ''; }
            else { push @len, $b; substr($data, 0, 1) = ''; }
        }
        my $name = substr($data, 0, $len[0], '');
        $p{$name} = substr($data, 0, $len[1], '');
    }
    return %p;
}

while (accept(my $conn, $listen)) {
    # Requests one after the other on this connection while berth asks to keep
    # it (FCGI_KEEP_CONN), as FastCGI wants: closing it anyway would make berth
    # send its next request into a closed connection.
    my $keep = 1;
    while ($keep) {
        my ($id, $params, $flags, $done) = (1, '', 0, 0);
        while (!$done) {
            my $head = read_exact($conn, 8) or last;
            my (undef, $type, $rid, $clen, $plen) = unpack('CCnnC', $head);
            my $content = $clen ? read_exact($conn, $clen) : '';
            read_exact($conn, $plen) if $plen;
            $id = $rid;
            if ($type == 1) { $flags = unpack('x2C', $content); }    # BEGIN_REQUEST: role, flags
            elsif ($type == 4) { $params .= $content; }               # PARAMS
            elsif ($type == 5) { $done = 1 if !$clen }                # STDIN, empty = end
        }
        last unless $done;
        my %env = params($params);
        $served++;
        # SERVER_ADDR: the address the request reached this node at, so
        # 127.0.0.1 is node a, 127.0.0.2 b and 127.0.0.3 c.
        my $body = "served by " . ($env{SERVER_ADDR} // '?') . "\n"
          . "  for client " . ($env{REMOTE_ADDR} // '?') . ", path " . ($env{REQUEST_URI} // '')
          . " (this process's request $served)\n";
        my $out = "Content-Type: text/plain; charset=utf-8\r\n\r\n$body";
        syswrite($conn, record(6, $id, $out) . record(6, $id, '') . record(3, $id, pack('NCx3', 0, 0)));
        $keep = $flags & 1;
    }
    close($conn);
}
