//! The sandbox's way out: a forwarder from `127.0.0.1:3128` on the
//! sandbox's own loopback to the worker's egress proxy, a unix socket
//! bound into the sandbox.
//!
//! When the sandbox has a network namespace of its own, nothing in it can
//! reach any address; steps (through `HTTP_PROXY`, which the worker sets
//! for every process of the sandbox), `http` steps and the browser
//! (`--proxy-server`) all go through here, and the proxy outside decides
//! what each connection may reach. The forwarder itself decides nothing.

use flywheel_model::protocol::{SANDBOX_PROXY_PORT, SANDBOX_PROXY_SOCKET};
use std::net::{Ipv4Addr, SocketAddr};

/// The proxy URL for the browser and for tools inside the sandbox.
pub fn proxy_url() -> String {
    format!("http://127.0.0.1:{SANDBOX_PROXY_PORT}")
}

/// Starts forwarding; fails when the port cannot be bound.
pub async fn start_forwarder() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, SANDBOX_PROXY_PORT))).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                // The proxy answers a client it cannot serve itself; if its
                // socket is gone, the client just sees the connection close.
                if let Ok(mut upstream) = tokio::net::UnixStream::connect(SANDBOX_PROXY_SOCKET).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    Ok(())
}
