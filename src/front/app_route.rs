//! An app route: which script runs, its CGI variables, the request body
//! (`request_body`: read whole, or its first bytes, before a process is
//! taken), a place in the tenant's gate (`tenants`), an app process, the
//! exchange with it, and the response read at the app's pace (`buffer`).
//! Request flow: handler → here → `tenants` → `apps` (a process, or a CGI
//! run started by the supervisor) →
//! `backend::fastcgi_conn`, `backend::http_proxy` or `backend::cgi_conn` →
//! `buffer`.
//!
//! Two kinds of route (DESIGN.md "Routes"):
//! - with `extensions` (PHP-style sites): the script is the path up to and
//!   including the first segment ending in one of them (`/doku.php`,
//!   `/lib/exe/css.php/x` with PATH_INFO `/x`); a directory path tries
//!   `index.EXT`. It must be a regular file under the site root by the static
//!   files' rules, or the answer is 404 and nothing runs. Paths without such a
//!   segment are static files.
//! - without: the app is mounted at the prefix: SCRIPT_NAME is the prefix,
//!   PATH_INFO the rest, SCRIPT_FILENAME the app's program.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::SiteRt;
use super::apps::{Apps, Lease, LeaseError};
use super::body::Body;
use super::buffer::{self, BufferLimits};
use super::request_body::{self, BodyLimits, ClientFault, Prefix, Sent, SpoolBody, Streamed};
use super::respond::Reject;
use super::spool::Spool;
use super::static_files;
use super::tenants::{self, Entry, Tenants};
use crate::backend::AppFailure;
use crate::backend::cgi_conn::{self, CgiFailure};
use crate::backend::cgi_env::{self, Peer, Script};
use crate::backend::fastcgi_conn::{self, StderrSink};
use crate::backend::http_proxy::{self, Forwarded};
use crate::config::Protocol;
use crate::ipc::{AppId, AppPlan};
use crate::tenant_log::{self, TenantLog};

/// Everything about the request the app exchange needs.
pub struct AppRequest<'a> {
    pub apps: &'a Arc<Apps>,
    /// The tenants' gates: the request takes a place in its app's tenant's.
    pub tenants: &'a Tenants,
    pub site: &'a SiteRt,
    /// The tenant's error log (the app's STDERR goes there).
    pub error_log: Option<Arc<TenantLog>>,
    pub prefix: &'a str,
    pub app: &'a AppId,
    pub extensions: &'a [String],
    /// The normalised path.
    pub path: &'a str,
    pub parts: &'a Parts,
    pub body: Option<Incoming>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    pub host: &'a str,
    /// The Host as the client sent it (port kept), for the proxy headers.
    pub raw_host: &'a str,
    pub user: Option<&'a str>,
    /// How the request body is read.
    pub body_limits: BodyLimits,
    /// How the response is buffered.
    pub buffer: BufferLimits,
}

/// Answers through the app, or None when the path is static under an
/// extension route.
pub async fn serve(req: AppRequest<'_>) -> Option<Result<Response<Body>, Reject>> {
    let root = match &req.site.root {
        Ok(root) => root,
        Err(why) => return Some(Err(Reject::Internal(why.clone()))),
    };
    let Some(plan) = req.apps.plan(req.app) else {
        let id = req.app;
        return Some(Err(Reject::Internal(format!("app {id} is not configured"))));
    };
    let id = &plan.id;
    // (Borrowed for a mounted app: an HTTP app needs none of them.)
    let (name, path_info, filename): (Cow<'_, str>, Cow<'_, str>, Cow<'_, Path>) =
        if req.extensions.is_empty() {
            let name = if req.prefix == "/" { "" } else { req.prefix };
            let rest = &req.path[name.len()..];
            (name.into(), rest.into(), plan.program.as_path().into())
        } else {
            match split_script(req.path, req.extensions) {
                Some((script, rest)) => match static_files::script_path(root, &script) {
                    Ok(file) => (script.into(), rest.into(), file.into()),
                    Err(e) => return Some(Err(e)),
                },
                // A directory: its index.EXT, if there is one.
                None if req.path.ends_with('/') => req.extensions.iter().find_map(|ext| {
                    let candidate = format!("{}index.{ext}", req.path);
                    let file = static_files::script_path(root, &candidate).ok()?;
                    Some((candidate.into(), "".into(), file.into()))
                })?,
                None => return None,
            }
        };
    let body = req.body.filter(|b| !http_body::Body::is_end_stream(b));
    let head_only = req.parts.method == http::Method::HEAD;
    let answer = if plan.protocol == Protocol::Http {
        let forwarded = Forwarded {
            client: req.remote,
            proto_https: req.tls,
            host: req.raw_host,
            mark: None,
        };
        // The body whole before a process is taken (a slow client holds
        // none), unless the app wants it as it comes (`request_buffering =
        // false`): then after its first `request_buffer` bytes (a small body
        // whole). Only a streamed body can fail the exchange for the client
        // (`fault`), and the app's timeout counts from its end (`sent`).
        let mut streamed_state = None;
        let body = match body {
            None => None,
            Some(body) if plan.pool.request_buffering => {
                match request_body::read_whole(body, &req.body_limits).await {
                    Ok(spool) if spool.is_empty() => None,
                    Ok(spool) => Some(SpoolBody(spool).boxed_unsync()),
                    Err(e) => return Some(Err(e)),
                }
            }
            Some(body) => match request_body::read_prefix(body, &req.body_limits).await {
                Ok(Prefix::Whole(spool)) if spool.is_empty() => None,
                Ok(Prefix::Whole(spool)) => Some(SpoolBody(spool).boxed_unsync()),
                Ok(Prefix::Partial(head, rest)) => {
                    let streamed = Streamed::new(head, rest, &req.body_limits);
                    streamed_state = Some((streamed.fault.clone(), streamed.sent.clone()));
                    Some(streamed.boxed_unsync())
                }
                Err(e) => return Some(Err(e)),
            },
        };
        let entry = match enter(req.tenants, id, req.error_log.as_ref()).await {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        http(
            req.apps,
            &plan,
            req.parts,
            body,
            &forwarded,
            streamed_state,
            entry,
        )
        .await
    } else {
        // FastCGI and CGI apps get the body whole, with its length (a body
        // of unknown length included), read before a process is taken.
        let spool = match body {
            None => None,
            Some(body) => match request_body::read_whole(body, &req.body_limits).await {
                Ok(spool) => Some(spool),
                Err(e) => return Some(Err(e)),
            },
        };
        let script = Script {
            name: &name,
            path_info: &path_info,
            filename: &filename,
            document_root: root.path(),
        };
        let peer = Peer {
            remote: req.remote,
            local: req.local,
            tls: req.tls,
            server_name: req.host,
            user: req.user,
        };
        // An empty body the client declared still has its length (0).
        let declared = req.parts.headers.contains_key(http::header::CONTENT_LENGTH);
        let length = spool.as_ref().map(Spool::unread).or(declared.then_some(0));
        let spool = spool.filter(|s| !s.is_empty());
        let params = cgi_env::variables(req.parts, &script, &peer, length);
        let entry = match enter(req.tenants, id, req.error_log.as_ref()).await {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        let log = req.error_log.clone();
        let answer = if plan.protocol == Protocol::Cgi {
            let script = (!req.extensions.is_empty()).then(|| filename.to_path_buf());
            cgi(req.apps, &plan, script, params, spool, req.error_log, entry).await
        } else {
            fastcgi(req.apps, &plan, params, spool, req.error_log, entry).await
        };
        answer.map(|resp| crate::backend::frame_cgi_response(resp, head_only, id, log))
    };
    Some(answer.and_then(|resp| buffer::response(resp, &req.buffer)))
}

/// A place for the request in the gate of its app's tenant (none when the
/// plan has no limits for it), once its body has been read: a client slow to
/// send its body holds no place. A refusal goes to the tenant's error log `log`.
async fn enter(
    tenants: &Tenants,
    id: &AppId,
    log: Option<&Arc<TenantLog>>,
) -> Result<Option<Entry>, Reject> {
    let Some(gate) = tenants.gate(&id.tenant) else {
        return Ok(None);
    };
    match gate.enter(id, log).await {
        Ok(entry) => Ok(Some(entry)),
        Err(overflow) => Err(Reject::TenantBusy {
            status: overflow.status,
            why: overflow.to_string(),
            retry_after: tenants::RETRY_AFTER,
        }),
    }
}

/// The script part and the rest of `path`, split after the first segment that
/// ends in `.EXT`.
pub fn split_script(path: &str, extensions: &[String]) -> Option<(String, String)> {
    let mut end = 0;
    for segment in path.split('/').skip(1) {
        end += 1 + segment.len();
        let matches = segment
            .rsplit_once('.')
            .is_some_and(|(stem, ext)| !stem.is_empty() && extensions.iter().any(|e| e == ext));
        if matches {
            return Some((path[..end].to_string(), path[end..].to_string()));
        }
    }
    None
}

async fn fastcgi(
    apps: &Arc<Apps>,
    plan: &Arc<AppPlan>,
    params: cgi_env::Vars<'_>,
    body: Option<Spool>,
    error_log: Option<Arc<TenantLog>>,
    entry: Option<Entry>,
) -> Result<Response<Body>, Reject> {
    let (id, pool) = (&plan.id, &plan.pool);
    let retry = body.is_none();
    let mut body = body;
    with_process(apps, id, pool, retry, None, entry, |lease, first_byte| {
        let stderr = write_stderr(error_log.clone(), plan);
        fastcgi_conn::request(
            lease,
            &params,
            body.take(),
            first_byte,
            pool.timeout,
            stderr,
        )
    })
    .await
}

/// The same for a CGI app: the supervisor starts the script (`script`, or the
/// app's own command when mounted) and the front end talks to its pipes.
async fn cgi(
    apps: &Arc<Apps>,
    plan: &Arc<AppPlan>,
    script: Option<PathBuf>,
    params: cgi_env::Vars<'_>,
    body: Option<Spool>,
    error_log: Option<Arc<TenantLog>>,
    entry: Option<Entry>,
) -> Result<Response<Body>, Reject> {
    let (id, pool) = (&plan.id, &plan.pool);
    // Environment strings: names are ASCII; a header value with bytes that
    // are not UTF-8 (obs-text) reaches the script with U+FFFD in their place.
    let env = params
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    let run = apps
        .run_cgi(id, script, env, entry)
        .await
        .map_err(lease_error)?;
    let stderr = write_stderr(error_log, plan);
    cgi_conn::exchange(run, body, pool.timeout, stderr)
        .await
        .map_err(|e| match e {
            CgiFailure::Timeout(t) => {
                Reject::GatewayTimeout(format!("app {id}: script did not answer within {t:?}"))
            }
            other => Reject::BadGateway(format!("app {id}: {other}")),
        })
}

/// The same for an HTTP app: proxy to one process.
async fn http(
    apps: &Arc<Apps>,
    plan: &AppPlan,
    parts: &Parts,
    body: Option<Body>,
    forwarded: &Forwarded<'_>,
    streamed: Option<(ClientFault, Arc<Sent>)>,
    entry: Option<Entry>,
) -> Result<Response<Body>, Reject> {
    let (id, pool) = (&plan.id, &plan.pool);
    let retry = body.is_none();
    let mut body = body;
    let (fault, sent) = streamed.unzip();
    with_process(
        apps,
        id,
        pool,
        retry,
        fault.as_ref(),
        entry,
        |lease, first_byte| {
            let idle = pool.timeout;
            let sent = sent.clone();
            http_proxy::request(lease, parts, body.take(), forwarded, first_byte, idle, sent)
        },
    )
    .await
}

/// Leases a process of `id` and runs `exchange` with it; the lease carries
/// `entry`, the request's place in its tenant's gate. A process that turns
/// out to be gone is dropped and, when `retry` (a request without a body, so
/// nothing was consumed), the request tries once more with another (keeping
/// its place). An exchange that failed because the client's streamed body
/// did (`fault`) is answered for the client, and the process keeps its place.
async fn with_process<F, Fut>(
    apps: &Arc<Apps>,
    id: &AppId,
    pool: &crate::config::Pool,
    retry: bool,
    fault: Option<&ClientFault>,
    mut entry: Option<Entry>,
    mut exchange: F,
) -> Result<Response<Body>, Reject>
where
    F: FnMut(Lease, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, (AppFailure, Lease)>>,
{
    let attempts = if retry { 2 } else { 1 };
    for attempt in 0..attempts {
        let mut lease = apps.lease(id).await.map_err(lease_error)?;
        lease.entry = entry.take();
        // The app's `timeout` is how long it may stay silent, like nginx's
        // `fastcgi_read_timeout`; a fresh process gets its start-up time.
        let first_byte = if lease.fresh {
            pool.start_timeout
        } else {
            pool.timeout
        };
        let (failure, mut lease) = match exchange(lease, first_byte).await {
            Ok(resp) => return Ok(resp),
            Err(failed) => failed,
        };
        entry = lease.entry.take();
        if let Some(reject) = fault.and_then(|f| f.lock().expect("fault lock").take()) {
            tracing::debug!("app {id}: request abandoned: {failure}");
            return Err(reject);
        }
        // A process that is gone or never started is replaced at once. (Its
        // death in a request then does not count towards the supervisor's
        // crash-loop backoff, which is for processes that die on their own: one
        // crashing page must not stop the whole app.) One that timed out or
        // answered badly is replaced too: at once when it serves one request
        // at a time (it may still be stuck in this one), after its other
        // requests when it serves several. A busy one stays.
        match failure {
            AppFailure::Gone(_) | AppFailure::StartTimeout(_) => lease.broken(),
            AppFailure::Busy(_) => {}
            _ if pool.concurrency <= 1 => lease.broken(),
            _ => lease.drain(),
        }
        return Err(match failure {
            AppFailure::Gone(e) if attempt + 1 < attempts => {
                tracing::debug!(
                    "app {id}: process {} gone ({e}); trying another",
                    lease.slot
                );
                continue;
            }
            AppFailure::StartTimeout(t) => Reject::Unavailable {
                why: format!("app {id} did not start within start_timeout ({t:?})"),
                retry_after: 5,
            },
            AppFailure::Timeout(t) => {
                Reject::GatewayTimeout(format!("app {id} did not answer within {t:?}"))
            }
            AppFailure::Busy(e) => Reject::Unavailable {
                why: format!("app {id}: {e}"),
                retry_after: 1,
            },
            AppFailure::Gone(e) => Reject::BadGateway(format!("app {id}: {e}")),
            other => Reject::BadGateway(format!("app {id}: {other}")),
        });
    }
    Err(Reject::BadGateway(format!(
        "app {id}: no process could be reached"
    )))
}

fn lease_error(e: LeaseError) -> Reject {
    match e {
        LeaseError::Unknown(_) => Reject::Internal(e.to_string()),
        LeaseError::StartFailed { .. } => Reject::Unavailable {
            why: e.to_string(),
            retry_after: 10,
        },
        LeaseError::Busy(..) | LeaseError::SupervisorGone => Reject::Unavailable {
            why: e.to_string(),
            retry_after: 5,
        },
    }
}

/// Where an app's STDERR (FastCGI records, a CGI script's stderr) goes: its
/// tenant's error log, one line per line with a timestamp and the app's name.
/// Never a write on the request path: lines are queued for the log's writer
/// thread, within the tenant's rate; what does not fit is dropped (and
/// counted), and the sink says so, so that the app is read more slowly.
fn write_stderr(log: Option<Arc<TenantLog>>, app: &Arc<AppPlan>) -> StderrSink {
    // The app's name is written out only if the app writes to its STDERR.
    let app = app.clone();
    let mut lines = None;
    Box::new(move |bytes: &[u8]| {
        let Some(log) = &log else { return true };
        let lines =
            lines.get_or_insert_with(|| tenant_log::Lines::new(log.clone(), app.id.to_string()));
        lines.feed(bytes) == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_split_after_the_first_matching_segment() {
        let php = ["php".to_string()];
        let split = |p| split_script(p, &php);
        assert_eq!(split("/doku.php"), Some(("/doku.php".into(), "".into())));
        assert_eq!(
            split("/lib/exe/css.php/x"),
            Some(("/lib/exe/css.php".into(), "/x".into()))
        );
        assert_eq!(
            split("/uploads/evil.jpg/x.php"),
            Some(("/uploads/evil.jpg/x.php".into(), "".into())),
            "the script is x.php (which must exist), never evil.jpg"
        );
        assert_eq!(split("/style.css"), None);
        assert_eq!(split("/a.php.txt"), None);
        assert_eq!(split("/.php"), None, "no stem");
        assert_eq!(split("/dir/"), None);
    }
}
