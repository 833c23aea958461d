//! The UDP socket under a QUIC endpoint, with buffers that hold a burst.
//!
//! Linux gives a UDP socket 208 KiB of receive buffer by default. 256 sends of 1 KiB in
//! flight, their acknowledgements and the receives' answers overflow that on loopback:
//! the kernel drops datagrams (`RcvbufErrors` in `/proc/net/snmp`), QUIC recovers them
//! by retransmission after a loss timer, and the messages in them wait. Both ends of
//! every mqd connection (the daemon's endpoint, the client library's) ask for
//! [`SOCKET_BUFFER`] instead; the kernel caps the request at `net.core.rmem_max` and
//! `net.core.wmem_max`.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffer asked of the kernel for each endpoint socket.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Largest UDP payload of a QUIC packet on mqd's connections, sent and accepted. Every
/// connection starts at 1,200 bytes and MTU discovery raises its packets toward this as
/// far as the path carries them: to this on loopback or with jumbo frames, to about 1,450
/// bytes on an Ethernet path of 1,500. (quinn's default stops at 1,452.) Fewer, larger
/// packets cost less: each is sealed, numbered, acknowledged and tracked on its own.
///
/// Not larger: quinn hands the kernel up to ten packets at once as one GSO send (its
/// `MAX_TRANSMIT_SEGMENTS`), and Linux refuses a UDP send of more than 65,507 bytes
/// (`EMSGSIZE`), which quinn-udp takes for a lost MTU probe: every packet of that send
/// would be lost. Ten of these make 65,000 bytes.
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

/// MTU discovery up to [`MAX_UDP_PAYLOAD`] on `transport`.
pub(crate) fn discover_mtu(transport: &mut quinn::TransportConfig) {
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtud));
}

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized buffers where the kernel
/// allows, and the receive buffer it got (Linux reports twice the usable size).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, usize)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // As quinn's own endpoints do: an IPv6 wildcard also takes IPv4.
        if let Err(e) = socket.set_only_v6(false) {
            tracing::debug!(error = %e, "cannot make the socket dual-stack");
        }
    }
    // A refused size is not fatal: the endpoint works with the default buffers.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot set the UDP receive buffer size");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot set the UDP send buffer size");
    }
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    Ok((socket.into(), got))
}

/// A QUIC endpoint on a socket from [`bind`]: a server if `server` is given.
pub(crate) fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<(quinn::Endpoint, usize)> {
    let (socket, got) = bind(addr)?;
    // Peers may send packets as large as ours. quinn's receive buffer grows with it
    // (this size × 64 GRO segments × 32 datagrams per call: 12.7 MiB of address space, of
    // which a call writes at most 32 × 64 KiB).
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let endpoint = quinn::Endpoint::new(
        config,
        server,
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )?;
    Ok((endpoint, got))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_gets_more_than_the_default_buffer_where_the_kernel_allows() {
        let (socket, got) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(socket.local_addr().unwrap().port() > 0);
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        // Linux doubles the size asked for (the extra is its bookkeeping), up to twice
        // the cap; where the cap cannot be read, say nothing about it.
        if let Some(max) = max {
            assert_eq!(got, 2 * SOCKET_BUFFER.min(max));
        }
    }
}
