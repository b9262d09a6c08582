//! The per-packet path without I/O: TUN packet → encrypted datagram, datagram → TUN packet.
//!
//! Workers call these functions between their reads and writes; benchmarks and tests call them
//! directly. Outputs borrow the caller's buffer, so nothing is allocated per packet.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use crate::peer::Peer;
use crate::stats::DropReason;
use crate::table::PeerTable;
use crate::wire::{COOKIE_REPLY_LEN, Datagram, IpHeader, classify};

/// Room a caller's output buffer needs beyond the packet: WireGuard's transport overhead, and
/// at least a handshake initiation.
pub const MIN_OUTPUT_LEN: usize = 148;

/// Result of one TUN packet.
#[derive(Debug)]
pub enum Outbound<'a> {
    /// Send this datagram (transport data or a handshake initiation) to `to`.
    Send { datagram: &'a [u8], to: SocketAddr },
    /// No session yet: the packet waits inside the peer's session while a handshake that is
    /// already under way completes.
    Queued,
    Dropped(DropReason),
}

/// Result of one datagram from the UDP socket.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// A decrypted IP packet for the TUN device.
    ToTun(&'a [u8]),
    /// A handshake response or cookie to send back. When `peer` is set, packets it queued
    /// while waiting for the handshake may now go out: call [`flush_queued`] until it is empty.
    Reply {
        datagram: &'a [u8],
        to: SocketAddr,
        peer: Option<Arc<Peer>>,
    },
    /// Consumed with nothing to forward (keepalive, cookie stored).
    Consumed,
    /// Not WireGuard: for the control thread.
    Control,
    Dropped(DropReason),
}

/// Encrypts one IP packet read from the TUN device for the peer its destination routes to.
pub fn encapsulate<'a>(table: &PeerTable, packet: &[u8], out: &'a mut [u8]) -> Outbound<'a> {
    let Some(header) = IpHeader::parse(packet) else {
        return Outbound::Dropped(DropReason::InvalidTunPacket);
    };
    let peer = match header {
        IpHeader::V4 { dst, .. } => table.lookup_v4(dst),
        IpHeader::V6 { dst, .. } => table.lookup_v6(dst),
    };
    let Some(peer) = peer else {
        return Outbound::Dropped(DropReason::NoRoute);
    };
    let mut state = peer.state.lock();
    let Some(to) = state.endpoint else {
        return Outbound::Dropped(DropReason::NoEndpoint);
    };
    let Some(tunn) = state.tunn.as_mut() else {
        return Outbound::Dropped(DropReason::NoPrivateKey);
    };
    match tunn.encapsulate(packet, out) {
        TunnResult::WriteToNetwork(datagram) => {
            peer.add_tx(datagram.len());
            Outbound::Send { datagram, to }
        }
        TunnResult::Done => Outbound::Queued,
        _ => Outbound::Dropped(DropReason::CryptoFailed),
    }
}

/// Handles one datagram received from `from` on the WireGuard port.
pub fn decapsulate<'a>(
    table: &PeerTable,
    from: SocketAddr,
    datagram: &[u8],
    out: &'a mut [u8],
) -> Inbound<'a> {
    let peer = match classify(datagram) {
        Datagram::Control => return Inbound::Control,
        Datagram::Malformed => return Inbound::Dropped(DropReason::MalformedDatagram),
        Datagram::HandshakeInit => match handshake_initiator(table, from, datagram) {
            Ok(peer) => peer,
            Err(Refusal::Cookie(cookie)) => {
                let Some(reply) = out.get_mut(..COOKIE_REPLY_LEN) else {
                    return Inbound::Dropped(DropReason::CryptoFailed);
                };
                reply.copy_from_slice(&cookie);
                return Inbound::Reply {
                    datagram: reply,
                    to: from,
                    peer: None,
                };
            }
            Err(Refusal::Dropped(reason)) => return Inbound::Dropped(reason),
        },
        Datagram::HandshakeResponse { receiver }
        | Datagram::CookieReply { receiver }
        | Datagram::TransportData { receiver } => match table.by_index(receiver >> 8) {
            Some(peer) => peer.clone(),
            None => return Inbound::Dropped(DropReason::UnknownPeer),
        },
    };
    decapsulate_for(table, &peer, from, datagram, out)
}

/// Why a handshake initiation found no peer.
enum Refusal {
    /// Under load: answer with this cookie instead of doing the expensive part.
    Cookie([u8; COOKIE_REPLY_LEN]),
    Dropped(DropReason),
}

/// Finds which peer sent a handshake initiation: the sender's static key is inside it,
/// encrypted to ours. Under load, the rate limiter answers with a cookie instead.
fn handshake_initiator(
    table: &PeerTable,
    from: SocketAddr,
    datagram: &[u8],
) -> Result<Arc<Peer>, Refusal> {
    let Some(identity) = table.identity.as_ref() else {
        return Err(Refusal::Dropped(DropReason::NoPrivateKey));
    };
    let mut cookie = [0u8; COOKIE_REPLY_LEN];
    let init = match identity
        .rate_limiter
        .verify_packet(Some(from.ip()), datagram, &mut cookie)
    {
        Ok(Packet::HandshakeInit(init)) => init,
        Err(TunnResult::WriteToNetwork(reply)) => {
            let mut out = [0u8; COOKIE_REPLY_LEN];
            let len = reply.len().min(COOKIE_REPLY_LEN);
            out[..len].copy_from_slice(&reply[..len]);
            return Err(Refusal::Cookie(out));
        }
        _ => return Err(Refusal::Dropped(DropReason::CryptoFailed)),
    };
    let half = parse_handshake_anon(&identity.secret, &identity.public, &init)
        .map_err(|_| Refusal::Dropped(DropReason::CryptoFailed))?;
    table
        .by_key(&half.peer_static_public)
        .cloned()
        .ok_or(Refusal::Dropped(DropReason::UnknownPeer))
}

fn decapsulate_for<'a>(
    table: &PeerTable,
    peer: &Arc<Peer>,
    from: SocketAddr,
    datagram: &[u8],
    out: &'a mut [u8],
) -> Inbound<'a> {
    let mut state = peer.state.lock();
    let Some(tunn) = state.tunn.as_mut() else {
        return Inbound::Dropped(DropReason::NoPrivateKey);
    };
    match tunn.decapsulate(Some(from.ip()), datagram, out) {
        TunnResult::WriteToTunnelV4(packet, src) => {
            roam(&mut state.endpoint, from);
            drop(state);
            peer.add_rx(datagram.len());
            accept_source(table, peer, IpAddr::V4(src), packet)
        }
        TunnResult::WriteToTunnelV6(packet, src) => {
            roam(&mut state.endpoint, from);
            drop(state);
            peer.add_rx(datagram.len());
            accept_source(table, peer, IpAddr::V6(src), packet)
        }
        TunnResult::WriteToNetwork(reply) => {
            // A handshake message authenticated the sender: that is where it now lives. A
            // cookie (the session is under load) authenticates nothing.
            if reply.first() != Some(&crate::wire::COOKIE_REPLY) {
                roam(&mut state.endpoint, from);
            }
            drop(state);
            peer.add_rx(datagram.len());
            peer.add_tx(reply.len());
            Inbound::Reply {
                datagram: reply,
                to: from,
                peer: Some(peer.clone()),
            }
        }
        TunnResult::Done => {
            if matches!(classify(datagram), Datagram::TransportData { .. }) {
                // An authenticated keepalive (a cookie reply proves nothing about the sender).
                roam(&mut state.endpoint, from);
            }
            drop(state);
            peer.add_rx(datagram.len());
            Inbound::Consumed
        }
        TunnResult::Err(_) => Inbound::Dropped(DropReason::CryptoFailed),
    }
}

/// Endpoint roaming: a peer is wherever its last authenticated message came from.
fn roam(endpoint: &mut Option<SocketAddr>, from: SocketAddr) {
    if *endpoint != Some(from) {
        *endpoint = Some(from);
    }
}

/// Cryptokey routing, inbound half: a peer may only send from addresses in its own
/// allowed-IPs, so no member can speak as another.
fn accept_source<'a>(
    table: &PeerTable,
    peer: &Arc<Peer>,
    src: IpAddr,
    packet: &'a [u8],
) -> Inbound<'a> {
    match table.lookup(src) {
        Some(owner) if Arc::ptr_eq(owner, peer) => Inbound::ToTun(packet),
        _ => Inbound::Dropped(DropReason::SpoofedSource),
    }
}

/// After a handshake completes, hands out the packets its session queued meanwhile, one per
/// call, encrypted and ready to send.
pub fn flush_queued<'a>(peer: &Peer, out: &'a mut [u8]) -> Option<(&'a [u8], SocketAddr)> {
    let mut state = peer.state.lock();
    let to = state.endpoint?;
    let tunn: &mut Tunn = state.tunn.as_mut()?;
    match tunn.decapsulate(None, &[], out) {
        TunnResult::WriteToNetwork(datagram) => {
            peer.add_tx(datagram.len());
            Some((datagram, to))
        }
        _ => None,
    }
}
