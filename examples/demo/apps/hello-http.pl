#!/usr/bin/perl
# An HTTP/1.1 app in plain Perl (only modules that perl-base ships), for the demo.
#
# berth starts it by socket activation, like systemd: the listening socket is
# fd 3, LISTEN_FDS=1, LISTEN_PID=our pid. This program only accepts on it.
# Outside berth:  systemd-socket-activate -l 127.0.0.1:8000 examples/demo/apps/hello-http.pl
#
# One process serves many connections at once (a select loop, no fork), each
# with keep-alive and pipelining: requests are read one after the other on a
# connection until the client sends `Connection: close` (or is HTTP/1.0 without
# `keep-alive`), goes away, or stays idle for $IDLE_TIMEOUT seconds. Request
# bodies are read by Content-Length or chunked Transfer-Encoding, and streamed
# (counted, never kept whole); every response has a Content-Length.
#
# Every path shows who is serving (pid, uid, gid, groups), the request and the
# proxy headers berth set; a path ending in /echo describes the request body.
# berth passes the path as the client sent it (the route prefix is kept), so
# the app works at whatever path it is mounted.
use strict;
use warnings;
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use POSIX qw(strftime);
use Socket qw(SHUT_WR);

my $IDLE_TIMEOUT = 60;      # seconds between requests on a connection
my $IO_TIMEOUT = 30;        # seconds without progress inside a request
my $MAX_HEAD = 16384;       # bytes of request line + headers
my $MAX_CONNECTIONS = 200;  # more wait in the listen backlog
my $SHOW = 64;              # bytes of the body shown at each end by /echo
my %REASON = (200 => 'OK', 400 => 'Bad Request', 431 => 'Request Header Fields Too Large',
              501 => 'Not Implemented', 505 => 'HTTP Version Not Supported');

$SIG{PIPE} = 'IGNORE';      # a client that goes away is an EPIPE, not our death

# --- socket activation ----------------------------------------------------
my $fds = $ENV{LISTEN_FDS};
die "hello-http.pl: LISTEN_FDS is not set: start me by socket activation (fd 3), e.g.\n"
  . "  systemd-socket-activate -l 127.0.0.1:8000 $0\n"
  unless defined $fds && $fds =~ /^\d+$/ && $fds >= 1;
die "hello-http.pl: LISTEN_PID=$ENV{LISTEN_PID} is not my pid ($$)\n"
  if defined $ENV{LISTEN_PID} && $ENV{LISTEN_PID} ne $$;
my $fdnames = $ENV{LISTEN_FDNAMES} // '';
delete @ENV{qw(LISTEN_FDS LISTEN_PID LISTEN_FDNAMES)};   # not for our children
open(my $listen, '+<&=', 3) or die "hello-http.pl: fd 3 is not open: $!\n";
die "hello-http.pl: fd 3 is not a socket\n" unless -S $listen;
nonblocking($listen);

my $started = time;
my $served = 0;             # requests answered by this process
my $accepted = 0;           # connections accepted by this process
my %conns;                  # fileno => connection state

my $me = identity();
print STDERR "hello-http.pl: pid $$ ($me) accepting on fd 3"
  . ($fdnames ne '' ? " ($fdnames)" : '') . "\n";

sub nonblocking {
    my ($fh) = @_;
    my $flags = fcntl($fh, F_GETFL, 0) or die "fcntl: $!";
    fcntl($fh, F_SETFL, $flags | O_NONBLOCK) or die "fcntl: $!";
}

sub identity {
    my $name = sub { my ($n) = @_; defined $n ? " ($n)" : '' };
    my ($rgid, @groups) = split ' ', $(;
    my (%seen, @g);
    for (@groups) { push @g, $_ . $name->(scalar getgrgid($_)) unless $seen{$_}++ }
    my $egid = (split ' ', $))[0];
    return "uid $<" . $name->(scalar getpwuid($<)) . ($> != $< ? ", euid $>" : '')
      . ", gid $rgid" . $name->(scalar getgrgid($rgid)) . ($egid != $rgid ? ", egid $egid" : '')
      . ", groups " . (@g ? join(' ', @g) : 'none');
}

# --- the event loop -------------------------------------------------------
while (1) {
    my ($rin, $win) = ('', '');
    vec($rin, fileno($listen), 1) = 1 if keys(%conns) < $MAX_CONNECTIONS;
    my $now = time;
    my $wait = 10;
    for my $c (values %conns) {
        # Stop reading while a pile of answers waits for a slow reader.
        vec($rin, $c->{fd}, 1) = 1 if $c->{phase} ne 'done' && length($c->{out}) < 262144;
        vec($win, $c->{fd}, 1) = 1 if length $c->{out};
        my $left = $c->{deadline} - $now;
        $wait = $left if $left < $wait;
    }
    $wait = 0.2 if $wait < 0.2;
    my ($rout, $wout) = ($rin, $win);
    my $n = select($rout, $wout, undef, $wait);
    if ($n < 0) {
        next if $! == EINTR;
        die "hello-http.pl: select: $!\n";
    }
    if ($n > 0 && vec($rout, fileno($listen), 1)) {
        accept_some();
    }
    for my $fd (keys %conns) {
        my $c = $conns{$fd} or next;
        if ($n > 0 && vec($wout, $fd, 1)) { write_out($c) or next; }
        if ($n > 0 && vec($rout, $fd, 1)) { read_in($c) or next; }
    }
    $now = time;
    for my $c (values %conns) {
        if ($now >= $c->{deadline}) { drop($c) }
    }
}

sub accept_some {
    for (1 .. 16) {
        my $fh;
        accept($fh, $listen) or do {
            return if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            warn "hello-http.pl: accept: $!\n";
            return;
        };
        nonblocking($fh);
        binmode($fh);
        $accepted++;
        my $c = { fh => $fh, fd => fileno($fh), in => '', out => '', phase => 'head',
                  requests => 0, conn_no => $accepted };
        touch($c);
        $conns{$c->{fd}} = $c;
        return if keys(%conns) >= $MAX_CONNECTIONS;
    }
}

# Pushes the deadline: idle between requests, shorter inside one.
sub touch {
    my ($c) = @_;
    my $idle = $c->{phase} eq 'head' && $c->{in} eq '' && $c->{out} eq '';
    $c->{deadline} = time + ($c->{phase} eq 'linger' ? 2 : $idle ? $IDLE_TIMEOUT : $IO_TIMEOUT);
}

sub drop {
    my ($c) = @_;
    delete $conns{$c->{fd}};
    close($c->{fh});
}

# Returns false when the connection is gone.
sub read_in {
    my ($c) = @_;
    my $got = sysread($c->{fh}, my $buf, 65536);
    if (!defined $got) {
        return 1 if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
        drop($c);
        return 0;
    }
    if ($got == 0) {                    # the client closed (or half-closed) its side
        if ($c->{phase} eq 'head' && $c->{in} =~ /\A[\r\n]*\z/ && $c->{out} eq '') {
            drop($c);                   # between requests: nothing lost
            return 0;
        }
        if ($c->{phase} eq 'linger') { drop($c); return 0; }
        # Mid-request: answer what is complete, then close.
        $c->{eof} = 1;
    }
    if ($c->{phase} eq 'linger') {      # discarding what comes after our close
        touch($c);
        return 1;
    }
    $c->{in} .= $buf;
    process($c);
    if ($c->{eof} && $c->{phase} ne 'done') {
        $c->{phase} = 'done';
        drop($c), return 0 if $c->{out} eq '';
    }
    touch($c);
    return write_out($c);
}

# Returns false when the connection is gone.
sub write_out {
    my ($c) = @_;
    if (length $c->{out}) {
        my $n = syswrite($c->{fh}, $c->{out});
        if (!defined $n) {
            return 1 if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            drop($c);
            return 0;
        }
        substr($c->{out}, 0, $n, '');
        touch($c);
    }
    if ($c->{out} eq '' && $c->{phase} eq 'done') {
        # Everything is sent: close our side, then read and discard what the
        # client may still send for a moment, so a TCP client is not reset
        # before it reads the answer.
        if ($c->{eof}) { drop($c); return 0; }
        shutdown($c->{fh}, SHUT_WR);
        $c->{phase} = 'linger';
        touch($c);
    }
    return 1;
}

# --- HTTP/1.1 parsing -----------------------------------------------------
# Parses as many complete requests as the buffer holds (pipelining), answering
# each in turn.
sub process {
    my ($c) = @_;
    while (1) {
        if ($c->{phase} eq 'head') {
            $c->{in} =~ s/\A(?:\r?\n)+//;           # stray CRLF between requests
            return if $c->{in} eq '';
            if ($c->{in} !~ /\r?\n\r?\n/) {
                return fail($c, 431, 'Request header fields too large')
                  if length($c->{in}) > $MAX_HEAD;
                return;
            }
            my $end = $+[0];
            return fail($c, 431, 'Request header fields too large') if $end > $MAX_HEAD;
            my $head = substr($c->{in}, 0, $end, '');
            start_request($c, $head) or return;
        }
        elsif ($c->{phase} eq 'body') {
            my $r = read_body($c);
            return if $r <= 0;                      # needs more, or failed
            finish_request($c);
        }
        else {
            return;                                 # done or lingering
        }
    }
}

# Parses a request head; sets up the body reader. False if answered with an error.
sub start_request {
    my ($c, $head) = @_;
    my @lines = split /\r?\n/, $head;
    my $line = shift @lines // '';
    my ($method, $target, $version) =
      $line =~ m{\A([!#\$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d\.\d)\z}
      or return fail($c, 400, 'Bad request line');
    return fail($c, 505, 'HTTP version not supported') unless $version =~ /\A1\.[01]\z/;
    my (%h, @order);
    for (@lines) {
        return fail($c, 400, 'Obsolete line folding') if /\A[ \t]/;
        my ($name, $value) = /\A([!#\$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*\z/
          or return fail($c, 400, 'Bad header line');
        my $k = lc $name;
        push @order, [$name, $value];
        $h{$k} = exists $h{$k} ? "$h{$k}, $value" : $value;
    }
    return fail($c, 431, 'Too many header fields') if @order > 200;
    return fail($c, 400, 'Missing Host') if $version eq '1.1' && !exists $h{host};

    my %conn_tokens = map { lc($_) => 1 } split /\s*,\s*/, $h{connection} // '';
    my $keep = $version eq '1.1' ? !$conn_tokens{close} : $conn_tokens{'keep-alive'};

    my $req = { method => $method, target => $target, version => $version,
                headers => \%h, order => \@order, keep => $keep ? 1 : 0,
                body_len => 0, sum => 0, first => '', last => '' };
    ($req->{path}, $req->{query}) = $target =~ /\A([^?]*)(?:\?(.*))?\z/s;

    if (exists $h{'transfer-encoding'}) {
        my @codings = map { lc } grep { $_ ne '' } split /\s*,\s*/, $h{'transfer-encoding'};
        return fail($c, 400, 'Transfer-Encoding without chunked last')
          unless @codings && $codings[-1] eq 'chunked';
        return fail($c, 501, "Transfer-Encoding $h{'transfer-encoding'} not implemented")
          if @codings > 1;
        $req->{mode} = 'chunked';
        $req->{chunk} = 'size';
        $req->{trailer_bytes} = 0;
        # Content-Length beside chunked: the length is ignored and the
        # connection closed after the answer (RFC 9112 section 6.1).
        $req->{keep} = 0 if exists $h{'content-length'};
    }
    elsif (exists $h{'content-length'}) {
        my %lens = map { $_ => 1 } split /\s*,\s*/, $h{'content-length'};
        my @lens = keys %lens;
        return fail($c, 400, 'Bad Content-Length')
          unless @lens == 1 && $lens[0] =~ /\A\d{1,15}\z/;
        $req->{mode} = 'length';
        $req->{left} = $lens[0] + 0;
    }
    else {
        $req->{mode} = 'length';
        $req->{left} = 0;
    }
    $c->{req} = $req;
    $c->{phase} = 'body';
    if (lc($h{expect} // '') eq '100-continue' && $version eq '1.1'
        && ($req->{mode} eq 'chunked' || $req->{left} > 0)) {
        $c->{out} .= "HTTP/1.1 100 Continue\r\n\r\n";
    }
    return 1;
}

# Consumes body bytes from the buffer: 1 when the body is complete, 0 when
# more are needed, -1 when the request failed (and was answered).
sub read_body {
    my ($c) = @_;
    my $req = $c->{req};
    if ($req->{mode} eq 'length') {
        my $n = $req->{left} < length($c->{in}) ? $req->{left} : length($c->{in});
        body_bytes($req, substr($c->{in}, 0, $n, '')) if $n;
        $req->{left} -= $n;
        return $req->{left} == 0 ? 1 : 0;
    }
    while (1) {
        my $state = $req->{chunk};
        if ($state eq 'size' || $state eq 'trailer') {
            my $nl = index($c->{in}, "\n");
            if ($nl < 0) {
                return 0 if length($c->{in}) <= 4096;
                fail($c, 400, 'Chunk line too long');
                return -1;
            }
            my $line = substr($c->{in}, 0, $nl + 1, '');
            $line =~ s/\r?\n\z//;
            if ($state eq 'trailer') {
                return 1 if $line eq '';            # end of the trailer section
                $req->{trailer_bytes} += length $line;
                if ($req->{trailer_bytes} > $MAX_HEAD) {
                    fail($c, 431, 'Trailer too large');
                    return -1;
                }
                next;
            }
            my ($hex) = $line =~ /\A([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?\z/ or do {
                fail($c, 400, 'Bad chunk size');
                return -1;
            };
            my $size = hex $hex;
            if ($size == 0) { $req->{chunk} = 'trailer'; next; }
            $req->{chunk} = 'data';
            $req->{left} = $size;
        }
        elsif ($state eq 'data') {
            my $n = $req->{left} < length($c->{in}) ? $req->{left} : length($c->{in});
            return 0 unless $n;
            body_bytes($req, substr($c->{in}, 0, $n, ''));
            $req->{left} -= $n;
            $req->{chunk} = 'crlf' if $req->{left} == 0;
        }
        else {                                      # the CRLF after a chunk's data
            if ($c->{in} =~ s/\A\r?\n//) { $req->{chunk} = 'size'; next; }
            return 0 if $c->{in} eq '' || $c->{in} eq "\r";
            fail($c, 400, 'Chunk data longer than its size');
            return -1;
        }
    }
}

# The body is counted, summed and its ends kept, never stored whole.
sub body_bytes {
    my ($req, $bytes) = @_;
    $req->{body_len} += length $bytes;
    $req->{sum} = ($req->{sum} + unpack('%32C*', $bytes)) % 4294967296;
    $req->{first} .= substr($bytes, 0, $SHOW - length $req->{first}) if length $req->{first} < $SHOW;
    $req->{last} = substr($req->{last} . substr($bytes, -$SHOW), -$SHOW);
}

# --- answers ---------------------------------------------------------------
sub finish_request {
    my ($c) = @_;
    my $req = delete $c->{req};
    $c->{requests}++;
    $served++;
    my ($status, $body) = page($c, $req);
    respond($c, $status, $body, $req->{keep}, $req->{method} eq 'HEAD');
    $c->{phase} = $req->{keep} ? 'head' : 'done';
}

# Answers an error and closes the connection after it.
sub fail {
    my ($c, $status, $why) = @_;
    delete $c->{req};
    $served++;
    respond($c, $status, "$status $why\n", 0, 0);
    $c->{phase} = 'done';
    return 0;
}

sub respond {
    my ($c, $status, $body, $keep, $head_only) = @_;
    my $date = strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime);
    $c->{out} .= "HTTP/1.1 $status " . ($REASON{$status} // 'Status') . "\r\n"
      . "Date: $date\r\n"
      . "Server: hello-http.pl\r\n"
      . "Content-Type: text/plain; charset=utf-8\r\n"
      . "Cache-Control: no-store\r\n"
      . "Content-Length: " . length($body) . "\r\n"
      . ($keep ? ($c->{http10} ? "Connection: keep-alive\r\n" : '') : "Connection: close\r\n")
      . "\r\n"
      . ($head_only ? '' : $body);
}

# Printable ASCII as is, everything else as \xNN.
sub shown {
    my ($s) = @_;
    $s =~ s/([^\x20-\x7e])/sprintf('\\x%02x', ord $1)/ge;
    return $s;
}

sub page {
    my ($c, $req) = @_;
    $c->{http10} = $req->{version} eq '1.0';
    my $h = $req->{headers};
    my $body_desc = $req->{body_len} . ' bytes' . ($req->{mode} eq 'chunked' ? ', chunked' : '');

    if ($req->{path} =~ m{/echo\z}) {
        return (200, "POST or PUT a body to $req->{path} to see its length and ends, e.g.\n"
                    . "  curl --data-binary \@FILE -H 'Host: " . ($h->{host} // 'HOST') . "' URL\n")
          unless $req->{method} eq 'POST' || $req->{method} eq 'PUT';
        my $n = $req->{body_len};
        return (200,
            "echo: $req->{method} $req->{path}, served by pid $$ (request $served of this process)\n"
          . "length     $n" . ($req->{mode} eq 'chunked' ? ' (chunked)' : '') . "\n"
          . "byte sum   $req->{sum}   (sum of all bytes mod 2^32, as perl's unpack('%32C*'))\n"
          . "first      " . shown($req->{first}) . "\n"
          . ($n > $SHOW ? "last       " . shown($req->{last}) . "\n" : ''));
    }

    my @proxy = grep { exists $h->{$_} } qw(x-forwarded-for x-forwarded-proto x-forwarded-host forwarded x-real-ip);
    my %canon = ('x-forwarded-for' => 'X-Forwarded-For', 'x-forwarded-proto' => 'X-Forwarded-Proto',
                 'x-forwarded-host' => 'X-Forwarded-Host', forwarded => 'Forwarded', 'x-real-ip' => 'X-Real-IP');
    my $uptime = time - $started;
    my $text =
        "Hello from an HTTP app in Perl (apps/hello-http.pl), started by socket activation.\n"
      . "\n"
      . "process    pid $$, up ${uptime}s, $served request(s) served, $accepted connection(s) accepted\n"
      . "user       $me\n"
      . "request    $req->{method} $req->{target} HTTP/$req->{version}\n"
      . "path       $req->{path}\n"
      . "query      " . ($req->{query} // '(none)') . "\n"
      . "host       " . ($h->{host} // '(none)') . "\n"
      . "body       $body_desc   (POST to a path ending in /echo for details)\n"
      . "connection #$c->{conn_no}, request $c->{requests} on it, "
      . ($req->{keep} ? 'kept alive' : 'closed after this answer') . "\n"
      . "\n"
      . "Proxy headers (berth sets these and drops the client's own copies):\n"
      . (@proxy ? join('', map { "  $canon{$_}: $h->{$_}\n" } @proxy) : "  (none: not behind berth?)\n")
      . "\n"
      . "All request headers, as received:\n"
      . join('', map { "  $_->[0]: $_->[1]\n" } @{$req->{order}});
    return (200, $text);
}
