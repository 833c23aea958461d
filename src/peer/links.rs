//! What each link between this node and a peer has carried: the QUIC connections this node
//! dialed to a peer (its Raft calls and replication streams as a leader, its forwarded
//! requests) and the ones a peer dialed to it (the same, this node answering), counted
//! since the node started, for the metrics endpoint.
//!
//! Each connection is kept here from when it is dialed or accepted until the first look
//! after it has closed; its final counts then move into its link's totals, so a link's
//! counters only grow across reconnections. Nothing here is on a request's path: the
//! counts are quinn's own, read when the metrics are scraped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Who opened a link's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// This node dialed the peer.
    Dialed,
    /// The peer dialed this node.
    Accepted,
}

impl Direction {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Dialed => "dialed",
            Direction::Accepted => "accepted",
        }
    }
}

/// One link's counts: every connection it has had, closed ones included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Connections opened (dialed or accepted) on the link.
    pub connections: u64,
    /// UDP datagrams sent (a datagram carries one or more QUIC packets).
    pub datagrams_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// Bytes of UDP payload sent.
    pub bytes_sent: u64,
    /// Bytes of UDP payload received.
    pub bytes_received: u64,
    /// Calls into the kernel that sent them (one call may carry several datagrams).
    pub send_calls: u64,
    /// QUIC packets sent.
    pub packets_sent: u64,
    /// QUIC packets declared lost (and their contents sent again).
    pub packets_lost: u64,
    /// Times loss made the congestion controller shrink its window.
    pub congestion_events: u64,
}

impl LinkCounts {
    fn add(&mut self, s: &quinn::ConnectionStats) {
        self.datagrams_sent += s.udp_tx.datagrams;
        self.datagrams_received += s.udp_rx.datagrams;
        self.bytes_sent += s.udp_tx.bytes;
        self.bytes_received += s.udp_rx.bytes;
        self.send_calls += s.udp_tx.ios;
        self.packets_sent += s.path.sent_packets;
        self.packets_lost += s.path.lost_packets;
        self.congestion_events += s.path.congestion_events;
    }
}

/// One link as read now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Who opened its connections.
    pub direction: Direction,
    /// Everything it has carried.
    pub counts: LinkCounts,
    /// The smoothed round-trip time of its open connection; `None` if it has none.
    pub rtt: Option<Duration>,
}

type Key = (SocketAddr, Direction);

#[derive(Default)]
struct State {
    /// Connections not yet seen closed.
    open: Vec<(Key, quinn::Connection)>,
    /// Per link, the counts of its connections seen closed, and how many it has had.
    totals: BTreeMap<Key, LinkCounts>,
}

impl State {
    /// Moves the connections that have closed into their links' totals.
    fn retire_closed(&mut self) {
        let totals = &mut self.totals;
        self.open.retain(|(key, conn)| {
            if conn.close_reason().is_none() {
                return true;
            }
            totals.entry(*key).or_default().add(&conn.stats());
            false
        });
    }
}

/// The links of one node (shared by its dialer and its accept loop).
#[derive(Default)]
pub struct Links {
    state: Mutex<State>,
}

impl Links {
    /// Counts `conn`, just dialed to or accepted from `peer`, on its link from now on.
    pub fn track(&self, peer: SocketAddr, direction: Direction, conn: &quinn::Connection) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.retire_closed();
        let key = (peer, direction);
        s.totals.entry(key).or_default().connections += 1;
        s.open.push((key, conn.clone()));
    }

    /// Every link this node has had, by peer address and then direction.
    pub fn read(&self) -> Vec<Link> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.retire_closed();
        let mut links: BTreeMap<Key, Link> = s
            .totals
            .iter()
            .map(|(&(peer, direction), counts)| {
                let link = Link {
                    peer,
                    direction,
                    counts: counts.clone(),
                    rtt: None,
                };
                ((peer, direction), link)
            })
            .collect();
        for (key, conn) in &s.open {
            let stats = conn.stats();
            let link = links.entry(*key).or_insert_with(|| Link {
                peer: key.0,
                direction: key.1,
                counts: LinkCounts::default(),
                rtt: None,
            });
            link.counts.add(&stats);
            // Of two open connections on one link (a peer redialed before the old one
            // timed out), the newer one's, which comes later in the list, is shown.
            link.rtt = Some(stats.path.rtt);
        }
        links.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A server endpoint and a client config that trusts it, on loopback.
    fn pair() -> (quinn::Endpoint, quinn::ClientConfig) {
        let dir = tempfile::tempdir().unwrap();
        let creds = crate::server::tls::ensure(dir.path(), &[]).unwrap();
        let server = super::super::server_crypto(&creds).unwrap();
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
        let sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
        (endpoint, super::super::client_config(&creds).unwrap())
    }

    /// Dials `server` from a fresh client endpoint; returns both ends.
    async fn connect(
        server: &quinn::Endpoint,
        config: &quinn::ClientConfig,
    ) -> (quinn::Connection, quinn::Connection) {
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let dialing = client
            .connect_with(config.clone(), addr, super::super::TLS_SERVER_NAME)
            .unwrap();
        let accepting = async { server.accept().await.unwrap().await.unwrap() };
        let (dialed, accepted) = tokio::join!(dialing, accepting);
        (dialed.unwrap(), accepted)
    }

    /// Sends `n` bytes on a new stream of `from` and reads them all on `to`.
    async fn carry(from: &quinn::Connection, to: &quinn::Connection, n: usize) {
        let mut send = from.open_uni().await.unwrap();
        send.write_all(&vec![7u8; n]).await.unwrap();
        send.finish().unwrap();
        let mut recv = to.accept_uni().await.unwrap();
        assert_eq!(recv.read_to_end(n + 1).await.unwrap().len(), n);
    }

    #[tokio::test]
    async fn a_links_counts_keep_growing_across_its_connections() {
        let (server, config) = pair();
        let links = Links::default();
        assert!(links.read().is_empty());

        let (first, accepted) = connect(&server, &config).await;
        let peer = first.remote_address();
        links.track(peer, Direction::Dialed, &first);
        carry(&first, &accepted, 100_000).await;
        let read = links.read();
        assert_eq!(read.len(), 1);
        let once = read[0].clone();
        assert_eq!((once.peer, once.direction), (peer, Direction::Dialed));
        assert_eq!(once.counts.connections, 1);
        assert!(once.counts.bytes_sent >= 100_000, "{once:?}");
        assert!(once.counts.datagrams_sent > 0 && once.counts.datagrams_received > 0);
        assert!(once.counts.send_calls > 0 && once.counts.packets_sent > 0);
        assert!(once.rtt.is_some());

        // The connection closes: its counts stay on the link, which has none open.
        first.close(0u32.into(), b"done");
        accepted.closed().await;
        let closed = links.read();
        assert_eq!(closed.len(), 1);
        assert!(closed[0].counts.bytes_sent >= once.counts.bytes_sent);
        assert_eq!(
            closed[0].rtt, None,
            "no open connection, no round-trip time"
        );

        // A second connection on the same link adds to the first's counts.
        let (second, accepted) = connect(&server, &config).await;
        links.track(peer, Direction::Dialed, &second);
        carry(&second, &accepted, 100_000).await;
        let again = links.read();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].counts.connections, 2);
        assert!(
            again[0].counts.bytes_sent >= closed[0].counts.bytes_sent + 100_000,
            "{again:?} after {closed:?}"
        );
        assert!(again[0].rtt.is_some());

        // The other end, counted as accepted: a link of its own, with what it received.
        links.track(peer, Direction::Accepted, &accepted);
        let both = links.read();
        assert_eq!(both.len(), 2);
        assert_eq!(both[1].direction, Direction::Accepted);
        assert!(both[1].counts.bytes_received >= 100_000, "{both:?}");
    }
}
