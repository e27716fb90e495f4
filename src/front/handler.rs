//! One request, from host lookup to the response: virtual host → route → auth →
//! handler (static files or redirect) → access log. Everything that is not a normal
//! answer is a [`Reject`], turned into a response in `respond`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode, Version, header, request::Parts};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::utf8_percent_encode;

use super::access_log::{Counted, Done, Entry};
use super::body::{self, Body};
use super::buffer::BufferLimits;
use super::conn::{Activity, ConnInfo};
use super::farm::{Answering, Decision, FarmRt, Handed};
use super::request_body::BodyLimits;
use super::respond::Reject;
use super::usage::TenantUsage;
use super::{Generation, RouteRt, Shared, SiteRt, app_route, path, static_files, vhost};
use crate::config::Action;

/// Answers one request. Never fails: errors are responses.
pub async fn handle(
    req: Request<Incoming>,
    conn: &ConnInfo,
    shared: &Shared,
    activity: Arc<Activity>,
) -> Response<Counted> {
    let (parts, body) = req.into_parts();
    respond(parts, Some(body), conn, shared, activity).await
}

/// Answers a request given by its head (the HTTP/1.1 fast lane calls this
/// directly; it only takes requests without a body).
pub async fn respond(
    mut parts: Parts,
    body: Option<Incoming>,
    conn: &ConnInfo,
    shared: &Shared,
    activity: Arc<Activity>,
) -> Response<Counted> {
    let started = Instant::now();
    let time = super::access_log::coarse_now();
    activity.begin();
    let generation = shared.current.load_full();
    let mut body = body;
    let mut note = FarmNote::default();
    // The farm's mark is removed from every request before anything reads
    // it, and taken only when it verifies: then another node placed the
    // request here, and vouches for the client's address. One that a node
    // signed but that is refused (stale, for another node) still says that
    // a node placed it: it is not placed again (see `farm`).
    let farm = shared.farm.load_full();
    let mark = parts.headers.remove(&crate::farm::mark::HEADER);
    let checked = match (&farm, mark) {
        (Some(farm), Some(value)) if !conn.admin => request_host(&parts)
            .ok()
            .map(|host| farm.verify(&value, &parts, &host)),
        _ => None,
    };
    let placed_by_node = checked.as_ref().is_some_and(|c| {
        matches!(
            c,
            Ok(_) | Err(crate::farm::mark::Refused::Stale | crate::farm::mark::Refused::NotForUs)
        )
    });
    let marked = checked.and_then(Result::ok);
    // Let in past its address's share only as another node's connection
    // (conn.rs): a request no node placed is refused, and the connection
    // closed once it is answered.
    let refused = conn.node_only && !conn.admin && !placed_by_node;
    if refused {
        activity.close_when_done();
    }
    let marked_conn;
    let conn = match &marked {
        Some(m) => {
            marked_conn = ConnInfo {
                peer: m.client,
                local: conn.local,
                peer_ip: m.client.ip().to_canonical().to_string().into(),
                tls: m.https,
                // The node that placed it checked the client's SNI.
                sni: request_host(&parts).ok().map(|h| h.into_owned()),
                admin: false,
                node_only: false,
            };
            note.from = Some(m.from.as_str().into());
            &marked_conn
        }
        None => conn,
    };
    let (site, user, result) = if conn.admin {
        let page = super::admin::serve(&parts, conn, shared, &generation).await;
        (None, None, page)
    } else if refused {
        let why = format!(
            "{}: past max_connections_per_ip, and not placed by another node",
            conn.peer
        );
        (
            None,
            None,
            Err(Reject::Unavailable {
                why,
                retry_after: 1,
            }),
        )
    } else {
        // Until its response head: this node's own requests in flight.
        note.answering = farm.as_deref().map(FarmRt::answering);
        let farm = farm.as_deref().filter(|_| !placed_by_node);
        let at = Here {
            conn,
            shared,
            generation: &generation,
            activity: &activity,
        };
        route(&parts, &mut body, at, farm, &mut note).await
    };
    let logs = shared.logs.load();
    let tenant_usage = site.and_then(|i| logs.usage.get(generation.router.sites()[i].log));
    if let Some(body) = body {
        read_rest(body, &parts, generation.limits.header_timeout, tenant_usage).await;
    }
    let response = result.unwrap_or_else(Reject::into_response);
    let (mut head, body) = response.into_parts();
    if let Some(cookie) = note.cookie.take() {
        head.headers.append(header::SET_COOKIE, cookie);
    }
    let farm_log = farm.as_deref().map(|f| {
        let served: Arc<str> = note.served_by.take().unwrap_or_else(|| f.name().into());
        (served, note.from.take())
    });

    let usage = tenant_usage.map(|u| (u.clone(), head.status.as_u16(), started));
    let log = site.and_then(|i| {
        let site = &generation.router.sites()[i];
        let file = logs.access.get(site.log)?.clone();
        let entry = Entry {
            vhost: site.canonical.clone(),
            remote: conn.peer_ip.clone(),
            user,
            time,
            started,
            method: parts.method.clone(),
            target: parts.uri.path_and_query().cloned(),
            version: parts.version,
            status: head.status.as_u16(),
            referer: parts.headers.get(header::REFERER).cloned(),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            farm: farm_log,
        };
        Some((file, entry))
    });
    let progress = activity.watch_response();
    let done = Done {
        log,
        activity,
        usage,
    };
    Response::from_parts(head, Counted::new(body, done, progress))
}

/// The most of an unread HTTP/2 request body that [`read_rest`] reads.
const REST_LIMIT: usize = 64 * 1024;

/// Reads the rest of an HTTP/2 request body that no handler took (static
/// files, redirects, refusals) before the response goes out: up to
/// [`REST_LIMIT`] bytes, for at most `within`, and not when the client waits
/// for `100-continue` (which hyper's HTTP/2 does not send).
///
/// Answered at once and dropped, the stream would be reset with NO_ERROR after
/// the response (RFC 9113 §8.1 allows it), and h2 must then ignore whatever the
/// client still sends on it (§5.1), malformed frames included; once its own half
/// is closed, h2 also stops checking WINDOW_UPDATEs against the 2^31-1 limit
/// (§6.9.1). Whether a malformed request was refused depended on which came
/// first, berth's answer or the client's next frame. Read first, the stream is
/// open when those frames come, and h2 refuses them as the RFC requires: a
/// malformed end (trailers without END_STREAM, a pseudo-header in trailers, more
/// DATA than `content-length`) with RST_STREAM(PROTOCOL_ERROR), a window past
/// the limit with FLOW_CONTROL_ERROR. HTTP/1.1 bodies are hyper's to drain.
async fn read_rest(
    body: Incoming,
    parts: &Parts,
    within: Duration,
    usage: Option<&Arc<TenantUsage>>,
) {
    if parts.version != Version::HTTP_2 || http_body::Body::is_end_stream(&body) {
        return;
    }
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return;
    }
    let mut body = body;
    let mut read = 0;
    let _ = tokio::time::timeout(within, async {
        // Until the end, a stream error (the client's reset, a malformed
        // frame), or the limit; past it the stream is reset with NO_ERROR.
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            read += n;
            if let Some(u) = usage {
                u.received(n as u64);
            }
            if read > REST_LIMIT {
                return;
            }
        }
    })
    .await;
}

/// What the farm did with a request, for the response and the access log.
#[derive(Default)]
struct FarmNote {
    /// The node that served it (None: this one).
    served_by: Option<Arc<str>>,
    /// The node that placed it here (it came with a valid mark).
    from: Option<Arc<str>>,
    /// The sticky cookie to set.
    cookie: Option<HeaderValue>,
    /// Counts the request among those answered here (not while another
    /// node answers it).
    answering: Option<Answering>,
}

/// Where a request is answered: its connection and this node's state.
#[derive(Clone, Copy)]
struct Here<'a> {
    conn: &'a ConnInfo,
    shared: &'a Shared,
    generation: &'a Generation,
    activity: &'a Arc<Activity>,
}

/// Finds the site and route and runs the handler; a handler that reads the
/// request body takes it from `body`. Returns the site's index (for the access
/// log, once the host is known) and the authenticated user. With `farm`, a
/// route with `balance` may be placed on another node first.
async fn route(
    parts: &Parts,
    body: &mut Option<Incoming>,
    at: Here<'_>,
    farm: Option<&FarmRt>,
    note: &mut FarmNote,
) -> (
    Option<usize>,
    Option<String>,
    Result<Response<Body>, Reject>,
) {
    let Here {
        conn,
        shared,
        generation,
        activity,
    } = at;
    let host = match request_host(parts) {
        Ok(host) => host,
        Err(e) => return (None, None, Err(e)),
    };
    let Some((index, site)) = generation.router.site(&host) else {
        return (None, None, Err(Reject::Misdirected));
    };
    // On TLS the certificate was chosen by SNI: a Host of another site on the
    // same connection would be answered under the wrong certificate.
    if conn.tls {
        let sni_site = conn
            .sni
            .as_deref()
            .and_then(|sni| generation.router.site(sni))
            .map(|(i, _)| i);
        if sni_site != Some(index) {
            return (Some(index), None, Err(Reject::Misdirected));
        }
    }
    let path = match path::normalize(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => return (Some(index), None, Err(e)),
    };
    let route = site_route(site, &path);
    if let Some(farm) = farm
        && let Some(placement) = route.and_then(|r| r.balance.as_deref())
        // Upgrades (WebSocket) stay where they arrive.
        && !parts.headers.contains_key(header::UPGRADE)
    {
        match farm.decide(placement, parts, &host, conn.tls) {
            Decision::Here => {}
            Decision::Redirect(to) => {
                return (Some(index), None, Ok(redirect(&to, 302, "/", "", None)));
            }
            Decision::Proxy(candidates) => {
                let raw = raw_host(parts).unwrap_or(&host);
                note.answering = None;
                let handed = farm
                    .hand_over(placement, candidates, parts, body.take(), conn, &host, raw)
                    .await;
                match handed {
                    Handed::Served(resp, node) => {
                        note.cookie = farm.sticky_cookie(placement, parts, &node, conn.tls);
                        note.served_by = Some(node);
                        return (Some(index), None, Ok(resp));
                    }
                    Handed::Here(back) => {
                        note.answering = Some(farm.answering());
                        *body = back;
                    }
                    Handed::Failed(reject) => return (Some(index), None, Err(reject)),
                }
            }
        }
        note.cookie = farm.sticky_cookie(placement, parts, farm.name(), conn.tls);
    }
    let mut user = None;
    if let Some((realm, users)) = route.and_then(|r| r.auth.as_ref()) {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let users = users.clone();
        // Password hashes are deliberately slow: keep them off the reactor.
        let checked = tokio::task::spawn_blocking(move || users.check(authorization.as_deref()))
            .await
            .ok()
            .flatten();
        match checked {
            Some(u) => user = Some(u),
            None => {
                let realm = realm.clone();
                return (Some(index), None, Err(Reject::Unauthorized { realm }));
            }
        }
    }
    // A declared length over the limit is refused before a byte of the body
    // is read (and before `100 Continue`); a streamed one as it passes it.
    let max_body = route.map_or(site.max_body, |r| r.max_body);
    if declared_length(parts).is_some_and(|len| len > max_body) {
        return (
            Some(index),
            user,
            Err(Reject::PayloadTooLarge { max: max_body }),
        );
    }
    let action = route.map(|r| &r.action).unwrap_or(&Action::Static);
    let prefix = route.map(|r| r.path.as_str()).unwrap_or("/");
    let serve_static = || match &site.root {
        Ok(root) => static_files::serve(root, &path, parts),
        Err(why) => Err(Reject::Internal(format!("site {}: {why}", site.canonical))),
    };
    let result = match action {
        Action::Static => serve_static(),
        Action::App { extensions, .. } => {
            let app = route
                .and_then(|r| r.app.as_ref())
                .expect("an app route has its app's name");
            // (The guard is not held across the request's awaits.)
            let (error_log, usage) = {
                let logs = shared.logs.load();
                let tenant = site.log;
                (
                    logs.errors.get(tenant).cloned(),
                    logs.usage.get(tenant).cloned(),
                )
            };
            let request = app_route::AppRequest {
                apps: &shared.apps,
                tenants: &shared.tenants,
                site,
                error_log,
                prefix,
                app,
                extensions,
                path: &path,
                parts,
                body: body.take(),
                remote: conn.peer,
                local: conn.local,
                tls: conn.tls,
                host: &host,
                raw_host: raw_host(parts).unwrap_or(&host),
                user: user.as_deref(),
                body_limits: BodyLimits {
                    max: max_body,
                    buffer: generation.limits.request_buffer,
                    tmp: generation.tmp.clone(),
                    idle: generation.limits.body_timeout,
                    peer: activity.peer(),
                    conn: Some(activity.clone()),
                    usage,
                },
                buffer: BufferLimits {
                    memory: generation.limits.response_buffer,
                    file: generation.limits.max_response_buffer,
                    tmp: generation.tmp.clone(),
                    peer: activity.peer(),
                },
            };
            match app_route::serve(request).await {
                Some(result) => result,
                None => serve_static(),
            }
        }
        Action::Redirect { to, status } => {
            Ok(redirect(to, *status, prefix, &path, parts.uri.query()))
        }
    };
    (Some(index), user, result)
}

/// The request's host: `:authority` (HTTP/2, or an absolute-form target) or the
/// one `Host` header. Several Host headers, or a Host that names another host
/// than the authority, are refused (RFC 9112 §3.2, RFC 9113 §8.3.1): a proxy in
/// front of berth might read the other one and file one tenant's response under
/// another tenant's name.
fn request_host(parts: &Parts) -> Result<Cow<'_, str>, Reject> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject::BadRequest("more than one Host header"));
    }
    let header_host = match header_host {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(vhost::normalize_host)
                .ok_or(Reject::BadRequest("invalid Host header"))?,
        ),
        None => None,
    };
    let authority = match parts.uri.authority() {
        Some(a) => {
            Some(vhost::normalize_host(a.as_str()).ok_or(Reject::BadRequest("invalid authority"))?)
        }
        None => None,
    };
    match (authority, header_host) {
        (Some(a), Some(h)) if a != h => {
            Err(Reject::BadRequest("Host does not match the authority"))
        }
        (Some(a), _) => Ok(a),
        (None, Some(h)) => Ok(h),
        (None, None) => Err(Reject::BadRequest("missing Host")),
    }
}

/// The body length the client declared, if any (hyper and the fast lane
/// refuse a malformed or ambiguous one before this).
fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The host as the client wrote it (port and case kept), for X-Forwarded-Host
/// and Forwarded (RFC 7239 §5.3): the authority, else the Host header.
fn raw_host(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
}

fn site_route<'a>(site: &'a SiteRt, path: &str) -> Option<&'a RouteRt> {
    let i = vhost::route(site.routes.iter().map(|r| r.path.as_str()), path)?;
    Some(&site.routes[i])
}

/// Like Apache's `Redirect`: the part of the path after the route prefix is
/// appended to the target, and the query string is kept.
fn redirect(
    to: &str,
    status: u16,
    prefix: &str,
    path: &str,
    query: Option<&str>,
) -> Response<Body> {
    let rest = if prefix == "/" {
        path
    } else {
        &path[prefix.len()..]
    };
    let mut location = to.to_string();
    if !rest.is_empty() {
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        if !location.ends_with('/') {
            location.push('/');
        }
        location.extend(utf8_percent_encode(rest, path::LOCATION_ENCODE));
    }
    if let Some(q) = query {
        location.push(if location.contains('?') { '&' } else { '?' });
        location.push_str(q);
    }
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::PERMANENT_REDIRECT);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(r: &Response<Body>) -> &str {
        r.headers()[header::LOCATION].to_str().unwrap()
    }

    #[test]
    fn redirects_append_the_rest_and_the_query() {
        let r = redirect(
            "https://new.test/",
            308,
            "/old",
            "/old/a b.html",
            Some("x=1"),
        );
        assert_eq!(location(&r), "https://new.test/a%20b.html?x=1");
        assert_eq!(r.status(), 308);
        let r = redirect("https://new.test", 301, "/old", "/old", None);
        assert_eq!(location(&r), "https://new.test");
        let r = redirect("/elsewhere", 302, "/", "/x/y", None);
        assert_eq!(location(&r), "/elsewhere/x/y");
    }
}
