#!/usr/bin/perl
# A FastCGI responder in plain Perl (no modules beyond perl-base), for the demo:
# berth binds the listening socket and hands it over as fd 0 (FCGI_LISTENSOCK_FILENO);
# this program only accepts on it. One request per connection, like php-cgi.
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
    my ($id, $params, $stdin, $done) = (1, '', '', 0);
    while (!$done) {
        my $head = read_exact($conn, 8) or last;
        my (undef, $type, $rid, $clen, $plen) = unpack('CCnnC', $head);
        my $content = $clen ? read_exact($conn, $clen) : '';
        read_exact($conn, $plen) if $plen;
        $id = $rid;
        if ($type == 4) { $params .= $content; }                       # PARAMS
        elsif ($type == 5) { $stdin .= $content; $done = 1 if !$clen } # STDIN, empty = end
    }
    next unless $done;
    my %env = params($params);
    $served++;
    my $body = "Hello from a FastCGI app in Perl, running as uid $< (pid $$).\n"
      . "SCRIPT_NAME=" . ($env{SCRIPT_NAME} // '') . " PATH_INFO=" . ($env{PATH_INFO} // '')
      . " QUERY_STRING=" . ($env{QUERY_STRING} // '') . "\n"
      . "This process has served $served request(s); request body: " . length($stdin) . " bytes.\n";
    my $out = "Content-Type: text/plain; charset=utf-8\r\n\r\n$body";
    syswrite($conn, record(6, $id, $out) . record(6, $id, '') . record(3, $id, pack('NCx3', 0, 0)));
    close($conn);
}
