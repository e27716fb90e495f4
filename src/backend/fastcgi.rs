//! FastCGI 1.0 records for the Responder role, and the CGI response head.
//!
//! Where it sits: client → front end (accept, TLS, virtual host, route, handler) →
//! **backend** → app. Once a route has picked a FastCGI app and the supervisor has
//! handed over its socket, the FastCGI backend writes the request with the encoders
//! here ([`begin_request`], [`params`], [`stdin`], [`abort_request`]), feeds every
//! byte read from the app to a [`Decoder`], and feeds the [`Record::Stdout`] data to
//! [`parse_cgi_head`] until the head is complete; whatever follows the head is the
//! response body, streamed on. [`Record::Stderr`] goes to the tenant's error log. The
//! plain CGI backend uses [`parse_cgi_head`] on a script's standard output.
//!
//! This module owns only the wire format: it does no I/O, keeps no clock and never
//! buffers a body; the caller owns sockets, buffers and time-outs. Everything the app
//! sends is untrusted (a tenant's code), so decoding never panics, never consumes a
//! partial record, and turns every protocol violation into a typed error that the
//! backend answers with 502 (or 503 for [`FcgiError::Overloaded`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// Largest content of one record (the 16-bit length field).
pub const MAX_CONTENT: usize = 65535;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;

// Record types (FastCGI 1.0, §8). GET_VALUES_RESULT (10) and UNKNOWN_TYPE (11) are
// management replies we never ask for; they are skipped like unknown types.
const BEGIN_REQUEST: u8 = 1;
const ABORT_REQUEST: u8 = 2;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const DATA: u8 = 8;
const GET_VALUES: u8 = 9;

const ROLE_RESPONDER: u16 = 1;
const FLAG_KEEP_CONN: u8 = 1;

const REQUEST_COMPLETE: u8 = 0;
const CANT_MPX_CONN: u8 = 1;
const OVERLOADED: u8 = 2;
const UNKNOWN_ROLE: u8 = 3;

/// Longest name or value a name-value pair can carry (31-bit length).
const MAX_PAIR_PART: usize = 0x7fff_ffff;

fn put_header(out: &mut BytesMut, kind: u8, id: u16, len: usize) {
    debug_assert!(len <= MAX_CONTENT);
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u16(id);
    out.put_u16(len as u16);
    // No padding: alignment is only a recommendation, and php-cgi, libfcgi and
    // Apache's mod_proxy_fcgi all accept unpadded records.
    out.put_u8(0);
    out.put_u8(0);
}

/// Appends a BEGIN_REQUEST record for the Responder role. With `keep_conn` the app
/// keeps the connection open after END_REQUEST (FCGI_KEEP_CONN), so it can carry the
/// next request; without it the app closes the connection when done.
///
/// `id` must not be 0, which FastCGI reserves for management records.
pub fn begin_request(out: &mut BytesMut, id: u16, keep_conn: bool) {
    debug_assert!(id != 0, "request id 0 is reserved");
    put_header(out, BEGIN_REQUEST, id, 8);
    out.put_u16(ROLE_RESPONDER);
    out.put_u8(if keep_conn { FLAG_KEEP_CONN } else { 0 });
    out.put_bytes(0, 5);
}

/// Appends the request's CGI variables as PARAMS records, then the empty PARAMS
/// record that ends the stream.
///
/// Names and values are arbitrary bytes; lengths below 128 take one byte, longer ones
/// four. Records hold at most [`MAX_CONTENT`] bytes and a pair is never split across
/// two records unless it is larger than one record can hold: php-cgi and php-fpm
/// parse each PARAMS record on its own and reject a pair that spans records, so only
/// such an oversized pair (which they would refuse anyway) relies on the spec's
/// stream semantics.
///
/// # Panics
/// If a name or value is longer than 2³¹−1 bytes, which the format cannot express.
pub fn params(out: &mut BytesMut, id: u16, pairs: &[(&[u8], &[u8])]) {
    debug_assert!(id != 0, "request id 0 is reserved");
    let payload: usize = pairs
        .iter()
        .map(|(n, v)| len_prefix_size(n.len()) + len_prefix_size(v.len()) + n.len() + v.len())
        .sum();
    // A hint: records packed with whole pairs may hold less than MAX_CONTENT.
    out.reserve(payload + HEADER_LEN * (payload / MAX_CONTENT + 2));

    let mut w = StreamWriter::new(out, PARAMS, id);
    for (name, value) in pairs {
        let mut prefix = [0u8; 8];
        let mut n = put_pair_len(&mut prefix, 0, name.len());
        n += put_pair_len(&mut prefix, n, value.len());
        let size = n + name.len() + value.len();
        if w.content_len() > 0 && w.content_len() + size > MAX_CONTENT {
            w.close();
        }
        w.put(&prefix[..n]);
        w.put(name);
        w.put(value);
    }
    w.close();
    put_header(out, PARAMS, id, 0);
}

fn len_prefix_size(len: usize) -> usize {
    if len < 0x80 { 1 } else { 4 }
}

fn put_pair_len(buf: &mut [u8; 8], at: usize, len: usize) -> usize {
    if len < 0x80 {
        buf[at] = len as u8;
        1
    } else {
        assert!(
            len <= MAX_PAIR_PART,
            "FastCGI name or value of {len} bytes is too long"
        );
        buf[at..at + 4].copy_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        4
    }
}

/// Writes a byte stream as records of one type, opening a new record whenever the
/// current one is full; the length field is patched when a record is closed.
struct StreamWriter<'a> {
    out: &'a mut BytesMut,
    kind: u8,
    id: u16,
    /// Offset of the open record's header in `out`.
    open: Option<usize>,
}

impl<'a> StreamWriter<'a> {
    fn new(out: &'a mut BytesMut, kind: u8, id: u16) -> Self {
        StreamWriter {
            out,
            kind,
            id,
            open: None,
        }
    }

    fn content_len(&self) -> usize {
        self.open
            .map_or(0, |start| self.out.len() - start - HEADER_LEN)
    }

    fn put(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.open.is_none() {
                self.open = Some(self.out.len());
                put_header(self.out, self.kind, self.id, 0);
            }
            let room = MAX_CONTENT - self.content_len();
            if room == 0 {
                self.close();
                continue;
            }
            let n = room.min(data.len());
            self.out.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    fn close(&mut self) {
        if let Some(start) = self.open.take() {
            let len = (self.out.len() - start - HEADER_LEN) as u16;
            self.out[start + 4..start + 6].copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// Appends request body bytes as STDIN records of at most [`MAX_CONTENT`] bytes each.
///
/// An empty `data` appends the empty STDIN record that ends the body, so never pass
/// an empty chunk in the middle of a body. A request without a body still needs that
/// one empty record.
pub fn stdin(out: &mut BytesMut, id: u16, data: &[u8]) {
    debug_assert!(id != 0, "request id 0 is reserved");
    if data.is_empty() {
        put_header(out, STDIN, id, 0);
        return;
    }
    out.reserve(data.len() + HEADER_LEN * data.len().div_ceil(MAX_CONTENT));
    for chunk in data.chunks(MAX_CONTENT) {
        put_header(out, STDIN, id, chunk.len());
        out.extend_from_slice(chunk);
    }
}

/// Appends an ABORT_REQUEST record (the client went away). The app is expected to
/// answer with END_REQUEST, so keep decoding until then, or close the connection.
pub fn abort_request(out: &mut BytesMut, id: u16) {
    debug_assert!(id != 0, "request id 0 is reserved");
    put_header(out, ABORT_REQUEST, id, 0);
}

/// One record from the app that the backend has to act on.
///
/// The empty STDOUT and STDERR records that close those streams, management records
/// (request id 0) and record types this module does not know are skipped inside
/// [`Decoder::decode`], so `Stdout` and `Stderr` are never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Response bytes: the CGI head, then the body.
    Stdout(Bytes),
    /// Diagnostics for the tenant's error log.
    Stderr(Bytes),
    /// The app finished the request with REQUEST_COMPLETE; `app_status` is what a CGI
    /// program would have passed to `exit`. The other protocol statuses are errors.
    End { app_status: u32 },
}

/// Why the app's output is not a valid FastCGI reply to our request. Each of these
/// means the connection must not be reused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FcgiError {
    #[error("FastCGI record of version {0}; only version 1 exists")]
    BadVersion(u8),
    #[error("FastCGI record for request id {got} on a connection carrying request {expected}")]
    WrongRequestId { expected: u16, got: u16 },
    #[error("FastCGI {} record from the app; only a web server sends those", type_name(*.0))]
    UnexpectedType(u8),
    #[error("FastCGI END_REQUEST record with {0} content bytes; it must have 8")]
    BadEndRequest(usize),
    #[error("FastCGI record after END_REQUEST")]
    AfterEnd,
    #[error("app closed the FastCGI connection before END_REQUEST")]
    EofBeforeEnd,
    #[error("FastCGI app cannot take a second request on this connection (CANT_MPX_CONN)")]
    CantMpxConn,
    #[error("FastCGI app is overloaded and refused the request (OVERLOADED)")]
    Overloaded,
    #[error("FastCGI app does not implement the Responder role (UNKNOWN_ROLE)")]
    UnknownRole,
    #[error("FastCGI END_REQUEST with unknown protocol status {0}")]
    UnknownProtocolStatus(u8),
}

fn type_name(kind: u8) -> &'static str {
    match kind {
        BEGIN_REQUEST => "BEGIN_REQUEST",
        ABORT_REQUEST => "ABORT_REQUEST",
        END_REQUEST => "END_REQUEST",
        PARAMS => "PARAMS",
        STDIN => "STDIN",
        STDOUT => "STDOUT",
        STDERR => "STDERR",
        DATA => "DATA",
        GET_VALUES => "GET_VALUES",
        _ => "unknown",
    }
}

/// Incremental decoder of the records an app sends for one request.
///
/// Feed it the bytes read from the connection in any split; it takes only whole
/// records off the front of the buffer. Use a new decoder for each request on a
/// kept-alive connection.
#[derive(Debug)]
pub struct Decoder {
    id: u16,
    ended: bool,
}

impl Decoder {
    /// A decoder for the request `request_id` (the id given to [`begin_request`]).
    pub fn new(request_id: u16) -> Self {
        debug_assert!(request_id != 0, "request id 0 is reserved");
        Decoder {
            id: request_id,
            ended: false,
        }
    }

    /// Whether END_REQUEST has been decoded; after it the request is over and, with
    /// FCGI_KEEP_CONN, the connection may carry the next one if no bytes are left
    /// over in the buffer.
    pub fn is_finished(&self) -> bool {
        self.ended
    }

    /// Takes whole records off the front of `buf` and returns the next one the
    /// backend has to act on; `Ok(None)` means more bytes are needed (the buffer then
    /// has room reserved for the rest of the record). Errors are final: close the
    /// connection.
    ///
    /// Header errors (version, request id, record type) are reported as soon as the
    /// 8-byte header is in, without waiting for the content.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Record>, FcgiError> {
        loop {
            if self.ended {
                // The app cannot send anything for a request we have not begun yet.
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FcgiError::AfterEnd)
                };
            }
            if buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let version = buf[0];
            let kind = buf[1];
            let id = u16::from_be_bytes([buf[2], buf[3]]);
            let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
            let total = HEADER_LEN + len + usize::from(buf[6]);

            if version != VERSION {
                return Err(FcgiError::BadVersion(version));
            }
            let wrong_id = FcgiError::WrongRequestId {
                expected: self.id,
                got: id,
            };
            match kind {
                STDOUT | STDERR | END_REQUEST if id != self.id => return Err(wrong_id),
                BEGIN_REQUEST | ABORT_REQUEST | PARAMS | STDIN | DATA | GET_VALUES => {
                    return Err(FcgiError::UnexpectedType(kind));
                }
                _ if id != 0 && id != self.id => return Err(wrong_id),
                _ => {}
            }
            if kind == END_REQUEST && len != 8 {
                return Err(FcgiError::BadEndRequest(len));
            }
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(None);
            }

            match kind {
                STDOUT | STDERR if len > 0 => {
                    let mut content = buf.split_to(total).freeze();
                    content.advance(HEADER_LEN);
                    content.truncate(len);
                    return Ok(Some(if kind == STDOUT {
                        Record::Stdout(content)
                    } else {
                        Record::Stderr(content)
                    }));
                }
                END_REQUEST => {
                    let body = &buf[HEADER_LEN..HEADER_LEN + 8];
                    let app_status = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let protocol_status = body[4];
                    buf.advance(total);
                    self.ended = true;
                    return match protocol_status {
                        REQUEST_COMPLETE => Ok(Some(Record::End { app_status })),
                        CANT_MPX_CONN => Err(FcgiError::CantMpxConn),
                        OVERLOADED => Err(FcgiError::Overloaded),
                        UNKNOWN_ROLE => Err(FcgiError::UnknownRole),
                        other => Err(FcgiError::UnknownProtocolStatus(other)),
                    };
                }
                // End of a stream, a management record or an unknown type.
                _ => buf.advance(total),
            }
        }
    }

    /// Checks the state when the app has closed the connection; `unread` is what is
    /// left in the buffer. A reply is complete only if END_REQUEST came and nothing
    /// follows it.
    pub fn at_eof(&self, unread: &[u8]) -> Result<(), FcgiError> {
        match (self.ended, unread.is_empty()) {
            (false, _) => Err(FcgiError::EofBeforeEnd),
            (true, false) => Err(FcgiError::AfterEnd),
            (true, true) => Ok(()),
        }
    }
}

/// The response head a CGI or FastCGI app wrote at the start of its output
/// (RFC 3875 §6), ready to become the HTTP response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgiHead {
    /// From `Status:`; else 302 when there is a `Location:`; else 200.
    pub status: StatusCode,
    /// The app's header fields, without `Status` and without the hop-by-hop fields
    /// the app must not set (see [`parse_cgi_head`]). Repeated fields such as
    /// `Set-Cookie` are all kept, in order. `Location` stays here even for a local
    /// redirect.
    pub headers: HeaderMap,
    /// The path and query of a local redirect (RFC 3875 §6.2.2): a `Location:` that
    /// is a path on this server (starts with one `/`) with no `Status:`. The web server
    /// may serve that path instead; `status` is 302 so that sending the head as it is
    /// makes a plain client redirect to the same path, which is what nginx does.
    pub local_redirect: Option<String>,
}

/// Why an app's response head is malformed. Lines are counted from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgiError {
    #[error("response head is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("response head line {line}: not a header field (no colon)")]
    NoColon { line: usize },
    #[error("response head line {line}: invalid header name \"{name}\"")]
    InvalidName { line: usize, name: String },
    #[error("response head line {line}: invalid value for {name}")]
    InvalidValue { line: usize, name: HeaderName },
    #[error("response head line {line}: starts with white space (folded lines are not allowed)")]
    ObsFold { line: usize },
    #[error("response head line {line}: NUL byte")]
    Nul { line: usize },
    #[error("response head line {line}: CR not followed by LF")]
    BareCr { line: usize },
    #[error(
        "response head line {line}: bad Status \"{value}\": expected a code from 200 to 599 \
         and an optional reason phrase"
    )]
    BadStatus { line: usize, value: String },
    #[error("response head line {line}: second Status field")]
    DuplicateStatus { line: usize },
    #[error("response head line {line}: second Location field")]
    DuplicateLocation { line: usize },
    #[error("response head line {line}: empty Location, or a local one that is not UTF-8")]
    BadLocation { line: usize },
    #[error("response head line {line}: bad or repeated Content-Length")]
    BadContentLength { line: usize },
    #[error("response head has too many header fields")]
    TooManyHeaders,
}

/// Fields the app must not set: they describe the framing and lifetime of one
/// connection, and the client's connection belongs to the front end, not to a
/// tenant's app. A `Transfer-Encoding: chunked` passed through over a body the front
/// end frames itself would let the app decide where the client or a cache in between
/// thinks the response ends, and smuggle a second response after it; `Connection`
/// and `Upgrade` would let it close or switch protocols on a connection the front end
/// means to reuse. They are dropped silently rather than failing the response, since
/// apps send `Connection: close` out of habit.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Largest response head accepted from an app or script.
pub const MAX_HEAD: usize = 64 * 1024;

/// Parses the CGI response head at the start of `buf`: header lines up to the first
/// empty line, each ended by `\n` or `\r\n`.
///
/// Returns `Ok(None)` while the head is incomplete, and `Ok(Some((head, consumed)))`
/// once it is; `buf[consumed..]` is the start of the body. A head (empty line
/// included) larger than `max` bytes is an error, as are lines without a colon,
/// invalid names or values, folded lines, NUL, a CR not followed by LF, a malformed,
/// repeated or informational (1xx) `Status`, a repeated `Location` and a bad or
/// repeated `Content-Length` (the front end frames the body by it, so it must be
/// unambiguous).
///
/// - `Status: 404 Not Found` sets the status; the reason phrase is optional and
///   dropped (HTTP/2 has none).
/// - `Location:` without `Status:` gives 302; when it is a local path it is also
///   reported as [`CgiHead::local_redirect`].
/// - Neither gives 200; no field is required (a missing `Content-Type` is the
///   front end's business).
/// - `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
///   `Transfer-Encoding` and `Upgrade` are removed.
///
/// A complete line's verdict never depends on later bytes, so the result for a
/// prefix of the output is either `Ok(None)` or the same as for the whole output.
pub fn parse_cgi_head(buf: &[u8], max: usize) -> Result<Option<(CgiHead, usize)>, CgiError> {
    let window = &buf[..buf.len().min(max)];
    let mut head = HeadBuilder::default();
    let mut pos = 0;
    let mut line_no = 0;
    while let Some(nl) = window[pos..].iter().position(|&b| b == b'\n') {
        line_no += 1;
        let mut line = &window[pos..pos + nl];
        pos += nl + 1;
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        if line.is_empty() {
            return head.finish().map(|h| Some((h, pos)));
        }
        head.line(line, line_no)?;
    }
    if buf.len() >= max {
        Err(CgiError::TooLarge { max })
    } else {
        Ok(None)
    }
}

#[derive(Default)]
struct HeadBuilder {
    headers: HeaderMap,
    status: Option<StatusCode>,
    /// The Location value and its line.
    location: Option<(HeaderValue, usize)>,
}

impl HeadBuilder {
    fn line(&mut self, line: &[u8], n: usize) -> Result<(), CgiError> {
        if line.contains(&0) {
            return Err(CgiError::Nul { line: n });
        }
        if line.contains(&b'\r') {
            return Err(CgiError::BareCr { line: n });
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(CgiError::ObsFold { line: n });
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(CgiError::NoColon { line: n })?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| CgiError::InvalidName {
            line: n,
            name: escape(&line[..colon]),
        })?;
        let value = HeaderValue::from_bytes(trim_ows(&line[colon + 1..])).map_err(|_| {
            CgiError::InvalidValue {
                line: n,
                name: name.clone(),
            }
        })?;

        match name.as_str() {
            "status" => {
                if self.status.is_some() {
                    return Err(CgiError::DuplicateStatus { line: n });
                }
                let status = parse_status(value.as_bytes()).ok_or_else(|| CgiError::BadStatus {
                    line: n,
                    value: escape(value.as_bytes()),
                })?;
                self.status = Some(status);
                return Ok(());
            }
            "location" => {
                if self.location.is_some() {
                    return Err(CgiError::DuplicateLocation { line: n });
                }
                if value.is_empty() {
                    return Err(CgiError::BadLocation { line: n });
                }
                self.location = Some((value.clone(), n));
            }
            "content-length" => {
                let digits = value.as_bytes();
                let valid = !digits.is_empty()
                    && digits.len() <= 19
                    && digits.iter().all(u8::is_ascii_digit);
                if !valid || self.headers.contains_key(header::CONTENT_LENGTH) {
                    return Err(CgiError::BadContentLength { line: n });
                }
            }
            other if HOP_BY_HOP.contains(&other) => return Ok(()),
            _ => {}
        }
        self.headers
            .try_append(name, value)
            .map_err(|_| CgiError::TooManyHeaders)?;
        Ok(())
    }

    fn finish(self) -> Result<CgiHead, CgiError> {
        let mut local_redirect = None;
        let status = match (self.status, &self.location) {
            (Some(status), _) => status,
            (None, Some((location, line))) => {
                let path = location.as_bytes();
                // "//host/x" is a network-path reference (another host), and browsers
                // read "/\host" the same way; neither is a path on this server.
                if path.starts_with(b"/") && !path.starts_with(b"//") && !path.starts_with(b"/\\") {
                    let path = std::str::from_utf8(path)
                        .map_err(|_| CgiError::BadLocation { line: *line })?;
                    local_redirect = Some(path.to_owned());
                }
                StatusCode::FOUND
            }
            (None, None) => StatusCode::OK,
        };
        Ok(CgiHead {
            status,
            headers: self.headers,
            local_redirect,
        })
    }
}

/// `NNN` or `NNN reason`, NNN in 200..=599. An informational status cannot end a
/// response, so an app that sends one is broken.
fn parse_status(value: &[u8]) -> Option<StatusCode> {
    let (code, rest) = value.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(rest.first(), None | Some(b' ' | b'\t')) {
        return None;
    }
    let code = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(200..=599).contains(&code) {
        return None;
    }
    StatusCode::from_u16(code).ok()
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The app's bytes as printable ASCII for an error message (they end up in logs),
/// shortened.
fn escape(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let mut s = bytes[..bytes.len().min(SHOWN)].escape_ascii().to_string();
    if bytes.len() > SHOWN {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_VALUES_RESULT: u8 = 10;
    const UNKNOWN_TYPE: u8 = 11;

    // ---- helpers -------------------------------------------------------------

    /// Splits encoder output into (type, id, content) and checks each header.
    fn records(mut bytes: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= HEADER_LEN, "truncated header");
            assert_eq!(bytes[0], VERSION);
            let len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
            let pad = usize::from(bytes[6]);
            assert_eq!(bytes[7], 0, "reserved byte");
            let id = u16::from_be_bytes([bytes[2], bytes[3]]);
            out.push((bytes[1], id, bytes[HEADER_LEN..HEADER_LEN + len].to_vec()));
            bytes = &bytes[HEADER_LEN + len + pad..];
        }
        out
    }

    /// Decodes a name-value pair stream; `None` if it is cut in the middle of a pair.
    fn decode_pairs(mut s: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        fn len(s: &mut &[u8]) -> Option<usize> {
            let first = *s.first()?;
            if first < 0x80 {
                *s = &s[1..];
                Some(usize::from(first))
            } else {
                let (b, rest) = s.split_at_checked(4)?;
                *s = rest;
                Some((u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff) as usize)
            }
        }
        let mut pairs = Vec::new();
        while !s.is_empty() {
            let nl = len(&mut s)?;
            let vl = len(&mut s)?;
            let (name, rest) = s.split_at_checked(nl)?;
            let (value, rest) = rest.split_at_checked(vl)?;
            pairs.push((name.to_vec(), value.to_vec()));
            s = rest;
        }
        Some(pairs)
    }

    fn rec(kind: u8, id: u16, content: &[u8], pad: u8) -> Vec<u8> {
        let mut v = vec![VERSION, kind];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&(content.len() as u16).to_be_bytes());
        v.push(pad);
        v.push(0);
        v.extend_from_slice(content);
        v.extend(std::iter::repeat_n(0xAA, usize::from(pad)));
        v
    }

    fn end(id: u16, app_status: u32, protocol_status: u8) -> Vec<u8> {
        let mut body = app_status.to_be_bytes().to_vec();
        body.extend_from_slice(&[protocol_status, 0, 0, 0]);
        rec(END_REQUEST, id, &body, 0)
    }

    /// Decodes `input` fed `step` bytes at a time; returns the records and the error
    /// that stopped decoding, if any.
    fn decode_all(id: u16, input: &[u8], step: usize) -> (Vec<Record>, Option<FcgiError>) {
        let mut dec = Decoder::new(id);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                let before = buf.len();
                match dec.decode(&mut buf) {
                    Ok(Some(r)) => {
                        assert!(buf.len() < before, "record without consuming");
                        got.push(r);
                    }
                    Ok(None) => {
                        // Skipped records may have gone, but no whole record is left.
                        if !dec.is_finished() && buf.len() >= HEADER_LEN {
                            let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
                            assert!(buf.len() < HEADER_LEN + len + usize::from(buf[6]));
                        }
                        assert_eq!(dec.decode(&mut buf), Ok(None), "progress left behind");
                        break;
                    }
                    Err(e) => return (got, Some(e)),
                }
            }
        }
        (got, None)
    }

    fn stdout(s: &str) -> Record {
        Record::Stdout(Bytes::copy_from_slice(s.as_bytes()))
    }

    // ---- encoders ------------------------------------------------------------

    #[test]
    fn begin_request_bytes() {
        let mut out = BytesMut::new();
        begin_request(&mut out, 0x0102, true);
        begin_request(&mut out, 1, false);
        assert_eq!(
            &out[..],
            &[
                1, 1, 1, 2, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, //
                1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
            ]
        );
    }

    #[test]
    fn abort_request_bytes() {
        let mut out = BytesMut::new();
        abort_request(&mut out, 7);
        assert_eq!(&out[..], &[1, 2, 0, 7, 0, 0, 0, 0]);
    }

    #[test]
    fn params_without_pairs_is_just_the_end_record() {
        let mut out = BytesMut::new();
        params(&mut out, 3, &[]);
        assert_eq!(&out[..], &[1, 4, 0, 3, 0, 0, 0, 0]);
    }

    #[test]
    fn params_length_prefixes_switch_at_128() {
        let n127 = vec![b'n'; 127];
        let n128 = vec![b'm'; 128];
        let mut out = BytesMut::new();
        params(&mut out, 1, &[(&n127, b"v"), (&n128, b"")]);
        let recs = records(&out);
        assert_eq!(recs.len(), 2);
        let content = &recs[0].2;
        assert_eq!(&content[..2], &[127, 1]);
        let second = 2 + 127 + 1;
        assert_eq!(&content[second..second + 5], &[0x80, 0, 0, 128, 0]);
        assert_eq!(content.len(), second + 5 + 128);
    }

    fn round_trip(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(u8, u16, Vec<u8>)> {
        let borrowed: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        let mut out = BytesMut::new();
        params(&mut out, 9, &borrowed);
        let recs = records(&out);
        let (last, body) = recs.split_last().unwrap();
        assert_eq!(
            last,
            &(PARAMS, 9, vec![]),
            "ends with the empty PARAMS record"
        );
        let mut stream = Vec::new();
        for (kind, id, content) in body {
            assert_eq!((*kind, *id), (PARAMS, 9));
            assert!(!content.is_empty() && content.len() <= MAX_CONTENT);
            stream.extend_from_slice(content);
        }
        assert_eq!(decode_pairs(&stream).unwrap(), pairs);
        recs
    }

    #[test]
    fn params_round_trip_short_and_long() {
        round_trip(&[
            (
                b"SCRIPT_FILENAME".to_vec(),
                b"/home/alice/public/index.php".to_vec(),
            ),
            (b"QUERY_STRING".to_vec(), b"".to_vec()),
            (vec![b'N'; 200], vec![b'v'; 300]),
            (b"HTTP_COOKIE".to_vec(), vec![b'c'; 5000]),
        ]);
    }

    #[test]
    fn params_over_one_record_keep_pairs_whole() {
        // 100 pairs of ~1 KiB: more than 65535 bytes in all.
        let pairs: Vec<_> = (0..100)
            .map(|i| {
                (
                    format!("HTTP_X_{i}").into_bytes(),
                    vec![b'a' + (i % 26) as u8; 1000],
                )
            })
            .collect();
        let recs = round_trip(&pairs);
        assert!(recs.len() >= 3, "split over several records");
        // php-cgi parses every PARAMS record on its own.
        let mut again = Vec::new();
        for (_, _, content) in &recs[..recs.len() - 1] {
            again.extend(decode_pairs(content).expect("a pair spans records"));
        }
        assert_eq!(again, pairs);
    }

    #[test]
    fn params_oversized_pair_spans_records() {
        let pairs = vec![
            (b"A".to_vec(), b"1".to_vec()),
            (b"HTTP_BIG".to_vec(), vec![b'x'; 3 * MAX_CONTENT + 17]),
            (b"Z".to_vec(), b"2".to_vec()),
        ];
        let recs = round_trip(&pairs);
        assert!(recs.len() >= 5);
    }

    #[test]
    fn params_fill_a_record_exactly() {
        // One pair of exactly MAX_CONTENT encoded bytes: 1 + 4 + 1 + value.
        let value = vec![b'v'; MAX_CONTENT - 6];
        let recs = round_trip(&[(b"K".to_vec(), value), (b"L".to_vec(), b"w".to_vec())]);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].2.len(), MAX_CONTENT);
        assert_eq!(recs[1].2, b"\x01\x01Lw");
    }

    #[test]
    fn stdin_splits_at_max_content() {
        for (size, lens) in [
            (MAX_CONTENT, vec![MAX_CONTENT]),
            (MAX_CONTENT + 1, vec![MAX_CONTENT, 1]),
            (2 * MAX_CONTENT, vec![MAX_CONTENT, MAX_CONTENT]),
            (10, vec![10]),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut out = BytesMut::new();
            stdin(&mut out, 4, &data);
            let recs = records(&out);
            assert_eq!(recs.iter().map(|r| r.2.len()).collect::<Vec<_>>(), lens);
            assert!(recs.iter().all(|r| r.0 == STDIN && r.1 == 4));
            assert_eq!(
                recs.into_iter().flat_map(|r| r.2).collect::<Vec<u8>>(),
                data
            );
        }
        let mut out = BytesMut::new();
        stdin(&mut out, 4, b"");
        assert_eq!(&out[..], &[1, 5, 0, 4, 0, 0, 0, 0]);
    }

    // ---- decoder -------------------------------------------------------------

    fn reply() -> Vec<u8> {
        [
            rec(STDOUT, 1, b"Status: 200\r\n\r\nhello", 3),
            rec(STDERR, 1, b"PHP Notice: oops", 0),
            rec(STDOUT, 1, b" world", 2),
            rec(STDERR, 1, b"", 0),
            rec(STDOUT, 1, b"", 0),
            end(1, 0, REQUEST_COMPLETE),
        ]
        .concat()
    }

    fn reply_records() -> Vec<Record> {
        vec![
            stdout("Status: 200\r\n\r\nhello"),
            Record::Stderr(Bytes::from_static(b"PHP Notice: oops")),
            stdout(" world"),
            Record::End { app_status: 0 },
        ]
    }

    #[test]
    fn decoder_whole_and_one_byte_at_a_time() {
        for step in [usize::MAX, 1, 2, 7, 8, 9] {
            let (got, err) = decode_all(1, &reply(), step);
            assert_eq!(err, None, "step {step}");
            assert_eq!(got, reply_records(), "step {step}");
        }
    }

    #[test]
    fn decoder_reserves_room_for_the_rest_of_a_record() {
        let mut dec = Decoder::new(1);
        let input = rec(STDOUT, 1, &[b'x'; 1000], 0);
        let mut buf = BytesMut::from(&input[..HEADER_LEN]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= input.len());
    }

    #[test]
    fn decoder_skips_unknown_and_management_records() {
        let input = [
            rec(UNKNOWN_TYPE, 0, &[GET_VALUES, 0, 0, 0, 0, 0, 0, 0], 0),
            rec(GET_VALUES_RESULT, 0, b"\x0e\x01FCGI_MPXS_CONNS0", 1),
            rec(200, 1, b"future", 0),
            rec(0, 0, b"", 0),
            rec(STDOUT, 1, b"a", 7),
            end(1, 5, REQUEST_COMPLETE),
        ]
        .concat();
        for step in [1, usize::MAX] {
            let (got, err) = decode_all(1, &input, step);
            assert_eq!(err, None);
            assert_eq!(got, vec![stdout("a"), Record::End { app_status: 5 }]);
        }
    }

    #[test]
    fn decoder_rejects_another_request_id() {
        let input = [rec(STDOUT, 1, b"a", 0), rec(STDOUT, 2, b"b", 0)].concat();
        let (got, err) = decode_all(1, &input, 1);
        assert_eq!(got, vec![stdout("a")]);
        assert_eq!(
            err,
            Some(FcgiError::WrongRequestId {
                expected: 1,
                got: 2
            })
        );
        // Stream records never use the management id.
        let (_, err) = decode_all(1, &end(0, 0, 0), usize::MAX);
        assert_eq!(
            err,
            Some(FcgiError::WrongRequestId {
                expected: 1,
                got: 0
            })
        );
        // Nor may unknown types name another request.
        let (_, err) = decode_all(1, &rec(99, 3, b"", 0), usize::MAX);
        assert_eq!(
            err,
            Some(FcgiError::WrongRequestId {
                expected: 1,
                got: 3
            })
        );
    }

    #[test]
    fn decoder_rejects_bad_version_from_the_header_alone() {
        let mut input = rec(STDOUT, 1, &[b'x'; 100], 0);
        input[0] = 2;
        let mut buf = BytesMut::from(&input[..HEADER_LEN]);
        assert_eq!(
            Decoder::new(1).decode(&mut buf),
            Err(FcgiError::BadVersion(2))
        );
        // Plain HTTP where FastCGI was expected.
        let (_, err) = decode_all(1, b"HTTP/1.1 200 OK\r\n\r\n", usize::MAX);
        assert_eq!(err, Some(FcgiError::BadVersion(b'H')));
    }

    #[test]
    fn decoder_rejects_server_record_types() {
        for kind in [
            BEGIN_REQUEST,
            ABORT_REQUEST,
            PARAMS,
            STDIN,
            DATA,
            GET_VALUES,
        ] {
            let (_, err) = decode_all(1, &rec(kind, 1, b"", 0), usize::MAX);
            assert_eq!(err, Some(FcgiError::UnexpectedType(kind)));
        }
        assert_eq!(
            FcgiError::UnexpectedType(PARAMS).to_string(),
            "FastCGI PARAMS record from the app; only a web server sends those"
        );
    }

    #[test]
    fn decoder_end_request_protocol_statuses() {
        let cases = [
            (REQUEST_COMPLETE, None),
            (CANT_MPX_CONN, Some(FcgiError::CantMpxConn)),
            (OVERLOADED, Some(FcgiError::Overloaded)),
            (UNKNOWN_ROLE, Some(FcgiError::UnknownRole)),
            (4, Some(FcgiError::UnknownProtocolStatus(4))),
            (255, Some(FcgiError::UnknownProtocolStatus(255))),
        ];
        for (status, want) in cases {
            let (got, err) = decode_all(1, &end(1, 0xdead_beef, status), 1);
            assert_eq!(err, want, "protocol status {status}");
            if want.is_none() {
                assert_eq!(
                    got,
                    vec![Record::End {
                        app_status: 0xdead_beef
                    }]
                );
            }
        }
    }

    #[test]
    fn decoder_end_request_must_have_eight_bytes() {
        let (_, err) = decode_all(1, &rec(END_REQUEST, 1, &[0, 0, 0, 0], 0), usize::MAX);
        assert_eq!(err, Some(FcgiError::BadEndRequest(4)));
    }

    #[test]
    fn decoder_after_end_and_at_eof() {
        let mut dec = Decoder::new(1);
        let mut buf = BytesMut::from(&reply()[..]);
        while let Some(r) = dec.decode(&mut buf).unwrap() {
            if r == (Record::End { app_status: 0 }) {
                break;
            }
        }
        assert!(dec.is_finished());
        assert_eq!(dec.at_eof(&buf), Ok(()));
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&rec(STDOUT, 1, b"late", 0));
        assert_eq!(dec.decode(&mut buf), Err(FcgiError::AfterEnd));
        assert_eq!(dec.at_eof(&buf), Err(FcgiError::AfterEnd));

        let mut dec = Decoder::new(1);
        let input = reply();
        let mut buf = BytesMut::from(&input[..input.len() - 3]);
        while dec.decode(&mut buf).unwrap().is_some() {}
        assert!(!dec.is_finished());
        assert_eq!(dec.at_eof(&buf), Err(FcgiError::EofBeforeEnd));
    }

    #[test]
    fn decoder_stdout_shares_the_buffer() {
        let mut buf = BytesMut::from(&rec(STDOUT, 1, b"payload", 0)[..]);
        let Ok(Some(Record::Stdout(b))) = Decoder::new(1).decode(&mut buf) else {
            panic!("no stdout");
        };
        assert_eq!(&b[..], b"payload");
        assert!(buf.is_empty());
    }

    // ---- CGI head ------------------------------------------------------------

    fn head(s: &str) -> CgiHead {
        let (h, used) = parse_cgi_head(s.as_bytes(), 8192)
            .unwrap()
            .expect("complete");
        assert!(used <= s.len());
        h
    }

    fn head_err(s: &[u8]) -> CgiError {
        parse_cgi_head(s, 8192).unwrap_err()
    }

    #[test]
    fn cgi_status_sets_the_status() {
        let h = head("Status: 404 Not Found\r\nContent-Type: text/html\r\n\r\n");
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert!(h.headers.get("status").is_none());
        assert_eq!(h.headers["content-type"], "text/html");
        assert_eq!(h.local_redirect, None);
        assert_eq!(
            head("Status: 503\n\n").status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(head("status:201\tCreated\n\n").status, StatusCode::CREATED);
        assert_eq!(head("Status: 299 Whatever\n\n").status.as_u16(), 299);
    }

    #[test]
    fn cgi_bad_status_lines() {
        for bad in [
            "Status:\n\n",
            "Status: 99\n\n",
            "Status: 100 Continue\n\n",
            "Status: 101 Switching Protocols\n\n",
            "Status: 600\n\n",
            "Status: 4044\n\n",
            "Status: 404Not Found\n\n",
            "Status: abc\n\n",
            "Status: -20\n\n",
            "Status: HTTP/1.1 200 OK\n\n",
        ] {
            assert!(
                matches!(
                    head_err(bad.as_bytes()),
                    CgiError::BadStatus { line: 1, .. }
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            head_err(b"Status: 200\nStatus: 404\n\n"),
            CgiError::DuplicateStatus { line: 2 }
        );
    }

    #[test]
    fn cgi_absolute_location_is_a_client_redirect() {
        let h = head("Location: https://example.org/x?y=1\r\n\r\n");
        assert_eq!(h.status, StatusCode::FOUND);
        assert_eq!(h.headers["location"], "https://example.org/x?y=1");
        assert_eq!(h.local_redirect, None);
        // Relative and network-path references are not local paths either.
        for loc in ["next.php", "//evil.example/x", "/\\evil.example/x"] {
            let h = head(&format!("Location: {loc}\n\n"));
            assert_eq!(
                (h.status, h.local_redirect),
                (StatusCode::FOUND, None),
                "{loc}"
            );
        }
    }

    #[test]
    fn cgi_local_location_is_a_local_redirect() {
        let h = head("Location: /index.php?page=2\n\n");
        assert_eq!(h.local_redirect.as_deref(), Some("/index.php?page=2"));
        assert_eq!(h.status, StatusCode::FOUND);
        assert_eq!(h.headers["location"], "/index.php?page=2");
    }

    #[test]
    fn cgi_location_with_status_keeps_the_status() {
        let h = head("Status: 301 Moved Permanently\nLocation: /new/\n\n");
        assert_eq!(h.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(h.headers["location"], "/new/");
        assert_eq!(h.local_redirect, None);
        let h = head("Location: /x\nStatus: 201\n\n");
        assert_eq!((h.status, h.local_redirect), (StatusCode::CREATED, None));
    }

    #[test]
    fn cgi_bad_locations() {
        assert_eq!(
            head_err(b"Location:\n\n"),
            CgiError::BadLocation { line: 1 }
        );
        assert_eq!(
            head_err(b"X: 1\nLocation: /caf\xe9\n\n"),
            CgiError::BadLocation { line: 2 }
        );
        assert_eq!(
            head_err(b"Location: /a\nLocation: /b\n\n"),
            CgiError::DuplicateLocation { line: 2 }
        );
    }

    #[test]
    fn cgi_head_without_status_location_or_type_is_200() {
        let h = head("X-Powered-By: PHP\r\n\r\n");
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers.len(), 1);
        let (h, used) = parse_cgi_head(b"\r\nbody", 100).unwrap().unwrap();
        assert_eq!((h.status, h.headers.len(), used), (StatusCode::OK, 0, 2));
        let h = head("Content-Type: text/plain; charset=utf-8\n\n");
        assert_eq!(h.status, StatusCode::OK);
    }

    #[test]
    fn cgi_hop_by_hop_fields_are_removed() {
        let h = head(
            "Connection: close\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\
             Upgrade: websocket\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
             Trailer: X-Sum\r\nContent-Type: text/html\r\nCache-Control: no-store\r\n\r\n",
        );
        let names: Vec<&str> = h.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "cache-control"]);
    }

    #[test]
    fn cgi_keeps_every_set_cookie() {
        let h = head("Set-Cookie: a=1; Path=/\nContent-Type: text/html\nSet-Cookie: b=2\n\n");
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
    }

    #[test]
    fn cgi_line_ends_and_consumed() {
        let input = b"A: 1\r\nB: 2\nC:3  \r\n\nthe body\r\n\r\n";
        let (h, used) = parse_cgi_head(input, 1000).unwrap().unwrap();
        assert_eq!(&input[used..], b"the body\r\n\r\n");
        assert_eq!(h.headers["a"], "1");
        assert_eq!(h.headers["b"], "2");
        assert_eq!(h.headers["c"], "3", "white space around the value trimmed");
    }

    #[test]
    fn cgi_malformed_lines() {
        assert_eq!(
            head_err(b"A: 1\n folded\n\n"),
            CgiError::ObsFold { line: 2 }
        );
        assert_eq!(
            head_err(b"A: 1\n\tfolded\n\n"),
            CgiError::ObsFold { line: 2 }
        );
        assert_eq!(head_err(b"<html>\n\n"), CgiError::NoColon { line: 1 });
        assert_eq!(
            head_err(b"HTTP/1.1 200 OK\r\n\r\n"),
            CgiError::NoColon { line: 1 }
        );
        assert_eq!(head_err(b"A: x\0y\n\n"), CgiError::Nul { line: 1 });
        assert_eq!(head_err(b"A: 1\nB: x\ry\n\n"), CgiError::BareCr { line: 2 });
        assert_eq!(head_err(b"A: 1\r\r\n\r\n"), CgiError::BareCr { line: 1 });
        assert_eq!(
            head_err(b"Bad Name: 1\n\n"),
            CgiError::InvalidName {
                line: 1,
                name: "Bad Name".into()
            }
        );
        assert_eq!(
            head_err(b": 1\n\n"),
            CgiError::InvalidName {
                line: 1,
                name: String::new()
            }
        );
        assert_eq!(
            head_err(b"X-A: b\x7fc\n\n"),
            CgiError::InvalidValue {
                line: 1,
                name: HeaderName::from_static("x-a")
            }
        );
        for cl in ["abc", "", "1,1", "-1", "+5", "99999999999999999999"] {
            let input = format!("Content-Length: {cl}\n\n");
            assert_eq!(
                head_err(input.as_bytes()),
                CgiError::BadContentLength { line: 1 }
            );
        }
        assert_eq!(
            head_err(b"Content-Length: 5\nContent-Length: 5\n\n"),
            CgiError::BadContentLength { line: 2 }
        );
        assert_eq!(
            head("Content-Length: 42\n\n").headers["content-length"],
            "42"
        );
    }

    #[test]
    fn cgi_error_messages_escape_the_apps_bytes() {
        let err = head_err(b"B\xffd\x1b[31m: 1\n\n");
        assert_eq!(
            err.to_string(),
            "response head line 1: invalid header name \"B\\xffd\\x1b[31m\""
        );
    }

    #[test]
    fn cgi_head_split_across_two_reads() {
        let full = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope";
        for cut in 0..full.len() {
            let first = parse_cgi_head(&full[..cut], 1024).unwrap();
            let ends_at = full.len() - 4;
            if cut < ends_at {
                assert!(first.is_none(), "cut {cut}");
            } else {
                assert_eq!(first.unwrap().1, ends_at);
            }
        }
        let (h, used) = parse_cgi_head(full, 1024).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert_eq!(&full[used..], b"nope");
    }

    #[test]
    fn cgi_head_larger_than_max() {
        let input = b"Content-Type: text/html\r\nX-Long: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let exact = input.len();
        assert!(parse_cgi_head(input, exact).unwrap().is_some());
        assert_eq!(
            parse_cgi_head(input, exact - 1),
            Err(CgiError::TooLarge { max: exact - 1 })
        );
        // Not complete yet and still under the limit: wait for more.
        assert_eq!(parse_cgi_head(&input[..20], exact), Ok(None));
        // Reaching the limit without an end is final.
        assert_eq!(
            parse_cgi_head(&[b'a'; 100], 100),
            Err(CgiError::TooLarge { max: 100 })
        );
    }

    #[test]
    fn cgi_too_many_headers_is_an_error_not_a_panic() {
        // Repeats of one name are unbounded in a HeaderMap; distinct names are not.
        let mut input: String = (0..40_000).map(|i| format!("h{i}:\n")).collect();
        input.push('\n');
        assert_eq!(
            parse_cgi_head(input.as_bytes(), 1 << 20),
            Err(CgiError::TooManyHeaders)
        );
    }

    // ---- randomized robustness (a stand-in for cargo fuzz) -------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    fn mutate(rng: &mut XorShift, input: &mut Vec<u8>) {
        for _ in 0..rng.below(4) {
            match rng.below(5) {
                0 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] = rng.byte();
                }
                1 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let i = rng.below(input.len() + 1);
                    input.insert(i, rng.byte());
                }
                3 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input.remove(i);
                }
                _ => input.truncate(rng.below(input.len() + 1)),
            }
        }
    }

    /// Mostly well-formed replies, so that mutations land everywhere in them.
    fn random_reply(rng: &mut XorShift) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.below(6) {
            let kind = [
                STDOUT,
                STDERR,
                STDOUT,
                GET_VALUES_RESULT,
                UNKNOWN_TYPE,
                42,
                END_REQUEST,
            ][rng.below(7)];
            let id = match kind {
                GET_VALUES_RESULT | UNKNOWN_TYPE => 0,
                _ if rng.below(20) == 0 => [0, 2][rng.below(2)],
                _ => 1,
            };
            let len = if rng.below(10) == 0 {
                rng.below(300)
            } else {
                rng.below(20)
            };
            let content: Vec<u8> = if kind == END_REQUEST {
                vec![0, 0, 0, rng.byte(), rng.below(5) as u8, 0, 0, 0]
            } else {
                (0..len).map(|_| rng.byte()).collect()
            };
            out.extend(rec(kind, id, &content, rng.below(9) as u8));
        }
        if rng.below(4) != 0 {
            out.extend(end(1, 0, REQUEST_COMPLETE));
        }
        out
    }

    #[test]
    fn decoder_survives_random_input() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut ends, mut errors) = (0, 0);
        for _ in 0..100_000 {
            let mut input = if rng.below(4) == 0 {
                (0..rng.below(64)).map(|_| rng.byte()).collect()
            } else {
                random_reply(&mut rng)
            };
            if rng.below(2) == 0 {
                mutate(&mut rng, &mut input);
            }
            // decode_all asserts progress; any split must give the same result.
            let whole = decode_all(1, &input, usize::MAX);
            let step = 1 + rng.below(16);
            assert_eq!(
                decode_all(1, &input, step),
                whole,
                "{input:?} in steps of {step}"
            );
            ends += usize::from(
                whole
                    .0
                    .last()
                    .is_some_and(|r| matches!(r, Record::End { .. })),
            );
            errors += usize::from(whole.1.is_some());
        }
        // The inputs reach both the happy path and the errors.
        assert!(
            ends > 10_000 && errors > 10_000,
            "{ends} ends, {errors} errors"
        );
    }

    const CGI_PIECES: &[&[u8]] = &[
        b"Status: 404 Not Found",
        b"Status: 200",
        b"Status: 1",
        b"Location: /x?y",
        b"Location: http://a/",
        b"Content-Type: text/html",
        b"Content-Length: 12",
        b"Set-Cookie: a=b",
        b"Connection: close",
        b"Transfer-Encoding: chunked",
        b"X: \xff",
        b": ",
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b":",
        b"\0",
        b"body",
    ];

    #[test]
    fn cgi_head_survives_random_input() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let (mut heads, mut errors) = (0, 0);
        for i in 0..100_000 {
            let mut input = Vec::new();
            if rng.below(8) == 0 {
                input.extend((0..rng.below(64)).map(|_| rng.byte()));
            } else {
                for _ in 0..rng.below(12) {
                    input.extend_from_slice(CGI_PIECES[rng.below(CGI_PIECES.len())]);
                    if rng.below(3) == 0 {
                        input.push(b'\n');
                    }
                }
            }
            mutate(&mut rng, &mut input);
            let max = [8, 64, 256, 8192][rng.below(4)];
            let whole = parse_cgi_head(&input, max);
            match &whole {
                Ok(Some((_, used))) => {
                    assert!(*used > 0 && *used <= input.len().min(max));
                    assert_eq!(input[used - 1], b'\n');
                    heads += 1;
                }
                Ok(None) => {}
                Err(_) => errors += 1,
            }
            // A prefix gives "need more" or the final answer, never something else.
            let cuts: Vec<usize> = if i % 16 == 0 {
                (0..=input.len()).collect()
            } else {
                vec![rng.below(input.len() + 1)]
            };
            for cut in cuts {
                let part = parse_cgi_head(&input[..cut], max);
                assert!(part == Ok(None) || part == whole, "{input:?} cut at {cut}");
            }
        }
        assert!(
            heads > 10_000 && errors > 10_000,
            "{heads} heads, {errors} errors"
        );
    }
}
