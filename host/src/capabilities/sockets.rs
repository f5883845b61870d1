//! Raw network sockets (`wasi:sockets`): always denied. A plugin reaches the network only
//! through `wasi:http`, where each request is checked against the stage's granted hosts.
//!
//! TCP is switched on only so that a connection attempt reaches the address check below,
//! which refuses it and logs what was tried; UDP and name lookups stay off entirely.

use std::net::SocketAddr;

use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use super::Capability;
use crate::logging;

/// The `sockets` capability: nothing is ever granted.
pub struct Sockets;

impl Capability for Sockets {
    const IMPORTS: &'static [(&'static str, &'static str)] =
        &[("wasi:sockets/", "network sockets: always denied")];
    type Granted = ();
    type State = ();

    fn wasi(builder: &mut WasiCtxBuilder, stage: &str, _: &()) -> anyhow::Result<()> {
        deny_all(builder, stage);
        Ok(())
    }

    fn state(_stage: &str, _: &()) {}
}

/// Refuses every socket address the plugin tries to connect to or bind, with a log line.
fn deny_all(builder: &mut WasiCtxBuilder, stage: &str) {
    let stage = stage.to_string();
    builder
        .allow_tcp(true)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(move |addr: SocketAddr, usage: SocketAddrUse| {
            let what = match usage {
                // The implicit bind before a `connect` asks for any local port; let it
                // through so the connect itself is what is checked, refused and logged.
                SocketAddrUse::TcpBind if addr.ip().is_unspecified() && addr.port() == 0 => {
                    return Box::pin(async { true });
                }
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => "bind",
                SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => "listen on",
                SocketAddrUse::TcpConnect => "connect to",
                SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => "exchange datagrams with",
            };
            logging::warn(
                Some(&stage),
                &format!(
                    "denied a network socket to {what} {addr}: plugins have no raw network access; \
                     HTTP goes through wasi:http to the hosts in `allow.hosts`"
                ),
            );
            Box::pin(async { false })
        });
}
