//! The egress proxy: a sandbox's only way out of its own network namespace.
//!
//! One proxy per execution listens on a unix socket in the execution's run
//! dir (`/run/flywheel/proxy.sock` inside); the agent forwards the
//! sandbox's `127.0.0.1:3128` to it, and the browser, `http` steps and
//! every tool that honours `HTTP(S)_PROXY` use that. It speaks HTTP proxy:
//! `CONNECT host:port` tunnels (HTTPS, WebSockets, anything over TCP) and
//! plain `GET http://…` requests, through hyper.
//!
//! Every connection is decided here, whatever asked for it:
//! - it must be allowed by the run's `url_allowlist` (whole URLs for plain
//!   requests; host and port for tunnels, whose paths are not visible);
//! - the host is resolved here, and every address it resolves to must be
//!   public: loopback, private, link-local (cloud metadata at
//!   169.254.169.254), shared, unspecified and multicast addresses are
//!   refused unless an allowlist entry names the host or the server allows
//!   private addresses (`--sandbox-allow-private`). The connection goes to
//!   the address that was checked, so a name cannot change its answer
//!   between the check and the connect.
//!
//! Each connection is logged to the execution's log when it ends: host,
//! port, address, bytes each way, or why it was refused.

use crate::channel::{bind_unix, open_to_sandbox};
use bytes::Bytes;
use flywheel_model::allowlist::Allowlist;
use flywheel_model::log::{LogKind, LogLevel, NewLogEntry};
use flywheel_model::protocol::{PROXY_SOCKET, REFUSED_HEADER};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

/// How long resolving and connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Most connections of one sandbox open at once.
const MAX_CONNECTIONS: usize = 256;
/// Largest request or response head read, and how long a request head may take.
const MAX_HEAD: usize = 64 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a sandbox may reach.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    pub allowlist: Allowlist,
    /// Private, loopback and link-local addresses are reachable.
    pub allow_private: bool,
}

/// A running proxy; it stops when dropped.
pub struct EgressProxy {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Shared by the connections of one proxy.
struct Shared {
    policy: EgressPolicy,
    /// Bounded: a sandbox that opens connections faster than they are
    /// stored loses log lines, not the worker's memory.
    log: Sender<NewLogEntry>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// Starts the proxy of one execution at `run_dir/proxy.sock`; what it
/// logs goes to `log`.
pub fn start(run_dir: &Path, policy: EgressPolicy, log: Sender<NewLogEntry>) -> std::io::Result<EgressProxy> {
    let path = run_dir.join(PROXY_SOCKET);
    let listener = bind_unix(&path)?;
    open_to_sandbox(&path)?;
    let shared = Arc::new(Shared { policy, log, slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)) });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
                let _ = shared.log.try_send(entry(
                    LogLevel::Warn,
                    format!("network: refused a connection: more than {MAX_CONNECTIONS} at once"),
                    json!({"allowed": false}),
                ));
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(shared, request).await) }
                });
                // A request head is small and comes soon: one that does not
                // costs the sandbox its connection, not the worker its memory.
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(MAX_HEAD)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
                drop(slot);
            });
        }
    });
    Ok(EgressProxy { task })
}

fn entry(level: LogLevel, message: String, data: serde_json::Value) -> NewLogEntry {
    NewLogEntry::new(LogKind::Log, level, message).with_data(json!({ "network": data }))
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(message.clone() + "\n")).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(&message.replace(['\r', '\n'], " ")) {
        response.headers_mut().insert(REFUSED_HEADER, value);
    }
    response
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // 6to4 carries an IPv4 address: it is what it carries.
            if segments[0] == 0x2002 {
                let v4 = std::net::Ipv4Addr::new(
                    (segments[1] >> 8) as u8,
                    segments[1] as u8,
                    (segments[2] >> 8) as u8,
                    segments[2] as u8,
                );
                return is_public(IpAddr::V4(v4));
            }
            let first = segments[0];
            // The deprecated IPv4-compatible ::a.b.c.d and Teredo 2001::/32.
            let ipv4_compatible = segments[..6].iter().all(|s| *s == 0);
            let teredo = first == 0x2001 && segments[1] == 0;
            !(ipv4_compatible
                || teredo
                || v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

/// Checks a destination; returns the address to connect to, or why not.
async fn decide(policy: &EgressPolicy, host: &str, port: u16, url: Option<&str>) -> Result<SocketAddr, String> {
    let allowed = match url {
        Some(url) => policy.allowlist.allows(url),
        None => policy.allowlist.allows_endpoint(host, port),
    };
    if !allowed {
        return Err("it is not in url_allowlist".into());
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((bare, port)))
            .await
            .map_err(|_| format!("resolving {bare} took too long"))?
            .map_err(|e| format!("{bare} does not resolve: {e}"))?
            .collect(),
    };
    let private_ok = policy.allow_private || policy.allowlist.names(bare);
    let mut refused = None;
    for address in addresses {
        if is_public(address.ip()) || private_ok {
            return Ok(address);
        }
        refused = Some(address.ip());
    }
    match refused {
        Some(ip) => Err(format!(
            "{ip} is a private, loopback or link-local address; name the host in url_allowlist, \
             or start the server with --sandbox-allow-private"
        )),
        None => Err(format!("{bare} has no address")),
    }
}

async fn connect(address: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(format!("could not connect to {address}: {err}")),
        Err(_) => Err(format!("connecting to {address} took too long")),
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    if request.method() == Method::CONNECT {
        tunnel(shared, request).await
    } else {
        forward(shared, request).await
    }
}

/// `CONNECT host:port`: checks, answers 200, then copies both ways.
async fn tunnel(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let Some(authority) = request.uri().authority().cloned() else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port".into());
    };
    let (host, port) = (authority.host().to_owned(), authority.port_u16().unwrap_or(443));
    let what = format!("CONNECT {host}:{port}");
    let address = match decide(&shared.policy, &host, port, None).await {
        Ok(address) => address,
        Err(why) => return refuse(&shared, &what, &host, port, why),
    };
    // A tunnel outlives the request that opened it: it holds a place of
    // its own among the sandbox's connections.
    let Ok(place) = shared.slots.clone().try_acquire_owned() else {
        return refuse(&shared, &what, &host, port, format!("more than {MAX_CONNECTIONS} connections at once"));
    };
    let upstream = match connect(address).await {
        Ok(stream) => stream,
        Err(why) => return refuse(&shared, &what, &host, port, why),
    };
    tokio::spawn(async move {
        let _place = place;
        let started = Instant::now();
        let (out, back) = match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let mut upstream = upstream;
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await.unwrap_or((0, 0))
            }
            Err(_) => (0, 0),
        };
        log_closed(&shared, &what, &host, port, address, out, back, started);
    });
    Response::new(Empty::new().map_err(|never| match never {}).boxed())
}

/// A plain `GET http://host/path`: checks the whole URL, then sends the
/// request (in origin form) on a connection of its own.
async fn forward(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let uri = request.uri().clone();
    let url = uri.to_string();
    let what = format!("{} {url}", request.method());
    if uri.scheme_str() != Some("http") {
        return text(StatusCode::BAD_REQUEST, "only http:// URLs are forwarded; use CONNECT for the rest".into());
    }
    let Some(host) = uri.host().map(str::to_owned) else {
        return text(StatusCode::BAD_REQUEST, "the request has no host".into());
    };
    let port = uri.port_u16().unwrap_or(80);
    if request.headers().contains_key(hyper::header::UPGRADE) {
        return refuse(&shared, &what, &host, port, "upgrades go through CONNECT".into());
    }
    let address = match decide(&shared.policy, &host, port, Some(&url)).await {
        Ok(address) => address,
        Err(why) => return refuse(&shared, &what, &host, port, why),
    };
    let upstream = match connect(address).await {
        Ok(stream) => stream,
        Err(why) => return refuse(&shared, &what, &host, port, why),
    };
    let (mut sender, connection) = match hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake::<_, Incoming>(TokioIo::new(upstream))
        .await
    {
        Ok(pair) => pair,
        Err(err) => return refuse(&shared, &what, &host, port, format!("{err}")),
    };
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    // What goes upstream is what was checked: the path as the allowlist saw
    // it (normalised), and the Host of the checked URL, not the client's.
    let Ok(checked) = url::Url::parse(&url) else {
        return refuse(&shared, &what, &host, port, "the URL does not parse".into());
    };
    let origin_form = match checked.query() {
        Some(query) => format!("{}?{query}", checked.path()),
        None => checked.path().to_owned(),
    };
    parts.uri = match origin_form.parse() {
        Ok(uri) => uri,
        Err(_) => return refuse(&shared, &what, &host, port, "the path does not parse".into()),
    };
    // Hop-by-hop headers, and those the client named as such, stay here.
    let named: Vec<String> = parts
        .headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for hop in ["proxy-connection", "proxy-authorization", "connection", "keep-alive", "te", "trailer", "upgrade"] {
        parts.headers.remove(hop);
    }
    for name in named {
        parts.headers.remove(name.as_str());
    }
    let authority = &checked[url::Position::BeforeHost..url::Position::AfterPort];
    if let Ok(authority) = hyper::header::HeaderValue::from_str(authority) {
        parts.headers.insert(hyper::header::HOST, authority);
    }
    let started = Instant::now();
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let status = response.status();
            let size = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let _ = shared.log.try_send(entry(
                LogLevel::Info,
                format!("network: {what} → {} ({} ms)", status.as_u16(), started.elapsed().as_millis()),
                json!({"host": host, "port": port, "address": address.ip().to_string(), "allowed": true, "status": status.as_u16(), "bytes_in": size}),
            ));
            response.map(|body| body.boxed())
        }
        Err(err) => refuse(&shared, &what, &host, port, format!("the request failed: {err}")),
    }
}

fn refuse(shared: &Shared, what: &str, host: &str, port: u16, why: String) -> Response<Body> {
    let _ = shared.log.try_send(entry(
        LogLevel::Warn,
        format!("network: refused {what}: {why}"),
        json!({"host": host, "port": port, "allowed": false, "reason": why}),
    ));
    text(StatusCode::FORBIDDEN, format!("Flywheel refused {what}: {why}"))
}

#[expect(clippy::too_many_arguments, reason = "one log line of a closed tunnel")]
fn log_closed(
    shared: &Shared,
    what: &str,
    host: &str,
    port: u16,
    address: SocketAddr,
    out: u64,
    back: u64,
    started: Instant,
) {
    let _ = shared.log.try_send(entry(
        LogLevel::Info,
        format!("network: {what} ({}) closed: {out} bytes out, {back} in, {} ms", address.ip(), started.elapsed().as_millis()),
        json!({"host": host, "port": port, "address": address.ip().to_string(), "allowed": true, "bytes_out": out, "bytes_in": back}),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2002:101:101::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn destinations_are_checked_before_any_connection() {
        let open = EgressPolicy { allowlist: Allowlist::default(), allow_private: false };
        assert!(decide(&open, "127.0.0.1", 8080, None).await.unwrap_err().contains("private"));
        assert!(decide(&open, "localhost", 8080, None).await.unwrap_err().contains("private"));
        assert!(decide(&open, "[::1]", 80, None).await.is_err());
        assert!(decide(&open, "169.254.169.254", 80, Some("http://169.254.169.254/latest/meta-data")).await.is_err());
        let named = EgressPolicy {
            allowlist: Allowlist::new(&["http://127.0.0.1:8080/demo".into()]).unwrap(),
            allow_private: false,
        };
        assert!(decide(&named, "127.0.0.1", 8080, Some("http://127.0.0.1:8080/demo/login")).await.is_ok());
        assert!(decide(&named, "127.0.0.1", 8080, Some("http://127.0.0.1:8080/api/workflows"))
            .await
            .unwrap_err()
            .contains("url_allowlist"));
        assert!(decide(&named, "127.0.0.1", 9090, None).await.is_err());
        assert!(decide(&named, "127.0.0.1", 8080, None).await.is_err(), "no tunnel around the path prefix");
        let private = EgressPolicy { allowlist: Allowlist::default(), allow_private: true };
        assert!(decide(&private, "127.0.0.1", 8080, None).await.is_ok());
    }
}
