//! Backends: how the front end talks to tenant apps (FastCGI, HTTP, CGI).
//!
//! Request flow position: after the handler picked an app route; the supervisor
//! has already started the app and handed over its socket.

pub mod cgi_conn;
pub mod cgi_env;
pub mod fastcgi;
pub mod fastcgi_conn;
pub mod http_proxy;
pub mod sock_owner;
