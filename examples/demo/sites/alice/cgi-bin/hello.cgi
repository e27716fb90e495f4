#!/bin/sh
# A plain CGI script (RFC 3875): berth's supervisor runs it as alice's user for
# each request; what it prints on stdout is the response.
printf 'Content-Type: text/plain\r\n\r\n'
echo "Hello from a shell CGI script, run as $(id -un) (uid $(id -u))."
echo "QUERY_STRING=$QUERY_STRING"
echo "PATH_INFO=$PATH_INFO"
echo "REMOTE_ADDR=$REMOTE_ADDR"
if [ "$REQUEST_METHOD" = POST ]; then
  echo "you sent $(wc -c | tr -d ' ') bytes"
fi
