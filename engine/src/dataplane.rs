//! The per-packet path without I/O: TUN packet → encrypted datagram, datagram → TUN packet.
//!
//! Workers call these functions between their reads and writes; benchmarks and tests call them
//! directly. Outputs borrow the caller's buffer, so nothing is allocated per packet.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use crate::config::Endpoint;
use crate::peer::Peer;
use crate::stats::DropReason;
use crate::table::PeerTable;
use crate::wire::{
    COOKIE_REPLY_LEN, Datagram, IpHeader, RELAY_HEADER_LEN, classify, relay_data,
    write_relay_header,
};

/// Room a caller's output buffer needs beyond the packet: WireGuard's transport overhead, at
/// least a handshake initiation, and a relay header in front.
pub const MIN_OUTPUT_LEN: usize = 148 + RELAY_HEADER_LEN;

/// Result of one TUN packet.
#[derive(Debug)]
pub enum Outbound<'a> {
    /// Send this datagram (transport data or a handshake initiation) to `to`.
    Send {
        datagram: &'a [u8],
        to: SocketAddr,
    },
    /// No session yet: the packet waits inside the peer's session while a handshake that is
    /// already under way completes.
    Queued,
    /// A LAN broadcast or multicast, admitted by this member's budget: send it to every
    /// peer with [`encapsulate_to`].
    Fanout,
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
    /// Not WireGuard: for the control thread (see [`control_payload`]).
    Control,
    Dropped(DropReason),
}

/// Where a datagram for the control thread came from, and its payload: a relayed one without
/// its relay header.
pub fn control_payload(from: SocketAddr, datagram: &[u8]) -> (Endpoint, &[u8]) {
    match relay_data(datagram) {
        Some((channel, payload)) => (Endpoint::relayed(from, channel), payload),
        None => (Endpoint::direct(from), datagram),
    }
}

/// Finishes a datagram whose WireGuard message (`len` bytes) was written after room for
/// `to`'s header: writes the relay header, if any, and returns the whole datagram.
pub(crate) fn framed(out: &mut [u8], to: Endpoint, len: usize) -> &[u8] {
    if let Some(channel) = to.relay_channel {
        write_relay_header(out, channel);
    }
    &out[..to.header_len() + len]
}

/// Puts a relay header in front of the `len` bytes at the start of `out` when `to` is
/// relayed (moving them: only handshake replies take this path, never data).
fn framed_in_place(out: &mut [u8], to: Endpoint, len: usize) -> Option<&[u8]> {
    let head = to.header_len();
    if head > 0 {
        if out.len() < head + len {
            return None;
        }
        out.copy_within(..len, head);
    }
    Some(framed(out, to, len))
}

/// Encrypts one IP packet read from the TUN device for the peer its destination routes to.
pub fn encapsulate<'a>(table: &PeerTable, packet: &[u8], out: &'a mut [u8]) -> Outbound<'a> {
    let Some(header) = IpHeader::parse(packet) else {
        return Outbound::Dropped(DropReason::InvalidTunPacket);
    };
    if let Some(lan) = table.lan()
        && lan.scope.is_fanout(&header)
    {
        return if lan.admit_outbound(packet.len()) {
            Outbound::Fanout
        } else {
            Outbound::Dropped(DropReason::BroadcastRateLimited)
        };
    }
    let peer = match header {
        IpHeader::V4 { dst, .. } => table.lookup_v4(dst),
        IpHeader::V6 { dst, .. } => table.lookup_v6(dst),
    };
    let Some(peer) = peer else {
        return Outbound::Dropped(DropReason::NoRoute);
    };
    encapsulate_to(peer, packet, out)
}

/// Encrypts one IP packet for `peer`, whatever its destination (a LAN broadcast's copy).
pub fn encapsulate_to<'a>(peer: &Peer, packet: &[u8], out: &'a mut [u8]) -> Outbound<'a> {
    let mut state = peer.state.lock();
    let Some(to) = state.endpoint else {
        return Outbound::Dropped(DropReason::NoEndpoint);
    };
    let Some(tunn) = state.tunn.as_mut() else {
        return Outbound::Dropped(DropReason::NoPrivateKey);
    };
    let Some(body) = out.get_mut(to.header_len()..) else {
        return Outbound::Dropped(DropReason::InvalidTunPacket);
    };
    match tunn.encapsulate(packet, body) {
        TunnResult::WriteToNetwork(message) => {
            let len = message.len();
            drop(state);
            let datagram = framed(out, to, len);
            peer.add_tx(datagram.len());
            Outbound::Send {
                datagram,
                to: to.addr,
            }
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
    match relay_data(datagram) {
        // Through a relay: the message inside is WireGuard's (or a probe's), and replies go
        // back the same way.
        Some((channel, inner)) => match classify(inner) {
            Datagram::Relayed { .. } => Inbound::Dropped(DropReason::MalformedDatagram),
            _ => decapsulate_via(table, Endpoint::relayed(from, channel), inner, out),
        },
        None => decapsulate_via(table, Endpoint::direct(from), datagram, out),
    }
}

fn decapsulate_via<'a>(
    table: &PeerTable,
    from: Endpoint,
    datagram: &[u8],
    out: &'a mut [u8],
) -> Inbound<'a> {
    let kind = classify(datagram);
    match kind {
        Datagram::Control => Inbound::Control,
        Datagram::Malformed | Datagram::Relayed { .. } => {
            Inbound::Dropped(DropReason::MalformedDatagram)
        }
        Datagram::HandshakeInit => match handshake_initiator(table, from.addr, datagram) {
            Ok(peer) => decapsulate_for(table, &peer, kind, from, datagram, out),
            Err(Refusal::Cookie(cookie)) => {
                let head = from.header_len();
                let Some(reply) = out.get_mut(head..head + COOKIE_REPLY_LEN) else {
                    return Inbound::Dropped(DropReason::CryptoFailed);
                };
                reply.copy_from_slice(&cookie);
                Inbound::Reply {
                    datagram: framed(out, from, COOKIE_REPLY_LEN),
                    to: from.addr,
                    peer: None,
                }
            }
            Err(Refusal::Dropped(reason)) => Inbound::Dropped(reason),
        },
        // The per-packet case: the receiver index finds the peer, borrowed from the table.
        Datagram::HandshakeResponse { receiver }
        | Datagram::CookieReply { receiver }
        | Datagram::TransportData { receiver } => match table.by_index(receiver >> 8) {
            Some(peer) => decapsulate_for(table, peer, kind, from, datagram, out),
            None => Inbound::Dropped(DropReason::UnknownPeer),
        },
    }
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
    // The MACs passed (and the cookie, under load): the sender owns its address, which may
    // now cost us only its own budget of the expensive part.
    if !identity.sources.allow(from.ip(), std::time::Instant::now()) {
        return Err(Refusal::Dropped(DropReason::HandshakeRateLimited));
    }
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
    kind: Datagram,
    from: Endpoint,
    datagram: &[u8],
    out: &'a mut [u8],
) -> Inbound<'a> {
    /// What the session made, as lengths: boringtun writes every output at the start of
    /// `out`, and a relayed reply needs `out` again to put its header in front.
    enum Made {
        Packet(usize, IpAddr),
        Reply(usize),
        Nothing,
        Refused,
    }
    let mut state = peer.state.lock();
    let Some(tunn) = state.tunn.as_mut() else {
        return Inbound::Dropped(DropReason::NoPrivateKey);
    };
    let made = match tunn.decapsulate(Some(from.addr.ip()), datagram, &mut *out) {
        TunnResult::WriteToTunnelV4(packet, src) => Made::Packet(packet.len(), IpAddr::V4(src)),
        TunnResult::WriteToTunnelV6(packet, src) => Made::Packet(packet.len(), IpAddr::V6(src)),
        TunnResult::WriteToNetwork(reply) => {
            // A handshake message authenticated the sender: that is where it now lives. A
            // cookie (the session is under load) authenticates nothing.
            if reply.first() != Some(&crate::wire::COOKIE_REPLY) {
                roam(&mut state.endpoint, from);
            }
            Made::Reply(reply.len())
        }
        TunnResult::Done => Made::Nothing,
        TunnResult::Err(_) => Made::Refused,
    };
    match made {
        Made::Packet(..) => roam(&mut state.endpoint, from),
        // An authenticated keepalive (a cookie reply proves nothing about the sender).
        Made::Nothing if matches!(kind, Datagram::TransportData { .. }) => {
            roam(&mut state.endpoint, from)
        }
        _ => {}
    }
    drop(state);
    match made {
        Made::Packet(len, src) => {
            peer.add_rx(datagram.len());
            accept_source(table, peer, src, &out[..len])
        }
        Made::Reply(len) => {
            let Some(reply) = framed_in_place(out, from, len) else {
                return Inbound::Dropped(DropReason::CryptoFailed);
            };
            peer.add_rx(datagram.len());
            peer.add_tx(reply.len());
            Inbound::Reply {
                datagram: reply,
                to: from.addr,
                peer: Some(peer.clone()),
            }
        }
        Made::Nothing => {
            peer.add_rx(datagram.len());
            Inbound::Consumed
        }
        Made::Refused => Inbound::Dropped(DropReason::CryptoFailed),
    }
}

/// Endpoint roaming: a peer is wherever its last authenticated message came from, except
/// that traffic through a relay moves no endpoint that is already set. Which relay, and
/// whether to use one at all, is the owner's decision (its path probing sets the endpoint):
/// the two members may each send through a different relay, or switch paths at different
/// moments, and roaming would otherwise pull ours onto the other's choice, even onto a relay
/// our probing already found dead.
fn roam(endpoint: &mut Option<Endpoint>, from: Endpoint) {
    if from.relay_channel.is_some() && endpoint.is_some() {
        return;
    }
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
        Some(owner) if Arc::ptr_eq(owner, peer) => {}
        _ => return Inbound::Dropped(DropReason::SpoofedSource),
    }
    if let Some(lan) = table.lan()
        && IpHeader::parse(packet).is_some_and(|h| lan.scope.is_fanout(&h))
        && !peer.lan_in.admit(crate::rate_limit::now_ns(), packet.len())
    {
        return Inbound::Dropped(DropReason::BroadcastRateLimited);
    }
    Inbound::ToTun(packet)
}

/// After a handshake completes, hands out the packets its session queued meanwhile, one per
/// call, encrypted and ready to send.
pub fn flush_queued<'a>(peer: &Peer, out: &'a mut [u8]) -> Option<(&'a [u8], SocketAddr)> {
    let mut state = peer.state.lock();
    let to = state.endpoint?;
    let tunn: &mut Tunn = state.tunn.as_mut()?;
    match tunn.decapsulate(None, &[], out.get_mut(to.header_len()..)?) {
        TunnResult::WriteToNetwork(message) => {
            let len = message.len();
            drop(state);
            let datagram = framed(out, to, len);
            peer.add_tx(datagram.len());
            Some((datagram, to.addr))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lan::{Lan, LanScope};
    use crate::loopback::{Loopback, ipv4_packet};

    fn sent<'a>(outbound: Outbound<'a>) -> &'a [u8] {
        match outbound {
            Outbound::Send { datagram, .. } => datagram,
            other => panic!("expected a datagram, got {other:?}"),
        }
    }

    fn lan_pair() -> Loopback {
        let mut pair = Loopback::connected();
        let scope = LanScope::containing(pair.a.inner.into(), 24);
        pair.a.table.set_lan(Some(Arc::new(Lan::new(scope))));
        pair.b.table.set_lan(Some(Arc::new(Lan::new(scope))));
        pair
    }

    #[test]
    fn lan_broadcasts_reach_every_member_unchanged() {
        let pair = lan_pair();
        for dst in [[255, 255, 255, 255], [10, 0, 0, 255], [224, 0, 2, 60]] {
            let packet = ipv4_packet(pair.a.inner, dst, 100);
            let datagrams = pair.send(&pair.a, &packet);
            assert_eq!(datagrams.len(), 1, "one copy per member, to {dst:?}");
            let mut buf = vec![0u8; 2048];
            match decapsulate(&pair.b.table, pair.a.addr, &datagrams[0], &mut buf) {
                Inbound::ToTun(delivered) => assert_eq!(delivered, &packet[..]),
                other => panic!("broadcast to {dst:?} not delivered: {other:?}"),
            }
        }
        // A member still cannot speak as another, to everyone or not.
        let spoofed = ipv4_packet([10, 0, 0, 9], [255, 255, 255, 255], 100);
        let mut buf = vec![0u8; 2048];
        let datagram = sent(encapsulate_to(&pair.a.peer, &spoofed, &mut buf)).to_vec();
        assert!(matches!(
            decapsulate(&pair.b.table, pair.a.addr, &datagram, &mut buf),
            Inbound::Dropped(DropReason::SpoofedSource)
        ));
    }

    #[test]
    fn without_a_lan_broadcasts_have_no_route() {
        let pair = Loopback::connected();
        let packet = ipv4_packet(pair.a.inner, [255, 255, 255, 255], 100);
        let mut buf = vec![0u8; 2048];
        assert!(matches!(
            encapsulate(&pair.a.table, &packet, &mut buf),
            Outbound::Dropped(DropReason::NoRoute)
        ));
    }

    #[test]
    fn a_broadcast_storm_is_cut_by_the_sender_and_by_each_receiver() {
        let pair = lan_pair();
        let packet = ipv4_packet(pair.a.inner, [255, 255, 255, 255], 1000);
        let mut buf = vec![0u8; 2048];
        let storm = 10 * (crate::lan::BURST as usize / packet.len());
        let sent_by_a = (0..storm)
            .filter(|_| {
                matches!(
                    encapsulate(&pair.a.table, &packet, &mut buf),
                    Outbound::Fanout
                )
            })
            .count();
        assert!(
            sent_by_a < storm / 2,
            "sender let {sent_by_a} of {storm} through"
        );
        // A member that skips its own limit meets ours.
        let mut delivered = 0;
        let mut limited = 0;
        for _ in 0..storm {
            let datagram = sent(encapsulate_to(&pair.a.peer, &packet, &mut buf)).to_vec();
            match decapsulate(&pair.b.table, pair.a.addr, &datagram, &mut buf) {
                Inbound::ToTun(_) => delivered += 1,
                Inbound::Dropped(DropReason::BroadcastRateLimited) => limited += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(
            delivered < storm / 2 && limited > storm / 2,
            "{delivered} / {limited}"
        );
        // Unicast from the same member is not limited.
        for _ in 0..100 {
            let unicast = pair.a.packet_to(&pair.b, 1000);
            let datagram = sent(encapsulate(&pair.a.table, &unicast, &mut buf)).to_vec();
            assert!(matches!(
                decapsulate(&pair.b.table, pair.a.addr, &datagram, &mut buf),
                Inbound::ToTun(_)
            ));
        }
    }

    #[test]
    fn first_packet_starts_a_handshake_and_is_delivered_after_it() {
        let pair = Loopback::new();
        let packet = pair.a.packet_to(&pair.b, 60);
        let mut out = vec![0u8; 2048];
        let Outbound::Send { datagram, to } = encapsulate(&pair.a.table, &packet, &mut out) else {
            panic!("expected a handshake initiation");
        };
        assert_eq!(to, pair.b.addr);
        assert_eq!(classify(datagram), Datagram::HandshakeInit);
        let connected = Loopback::connected();
        assert!(connected.a.peer.tx_bytes() > 0 && connected.b.peer.rx_bytes() > 0);
    }

    /// A host that floods valid initiations costs us only its own budget of Diffie-Hellmans;
    /// another host's handshake still gets through at once.
    #[test]
    fn a_flood_of_initiations_from_one_address_is_limited_to_its_budget() {
        let pair = Loopback::new();
        let packet = pair.a.packet_to(&pair.b, 60);
        let mut out = vec![0u8; 2048];
        let Outbound::Send { datagram, .. } = encapsulate(&pair.a.table, &packet, &mut out) else {
            panic!("expected a handshake initiation");
        };
        let init = datagram.to_vec();
        let limited = (0..40)
            .filter(|_| {
                matches!(
                    decapsulate(&pair.b.table, pair.a.addr, &init, &mut out),
                    Inbound::Dropped(DropReason::HandshakeRateLimited)
                )
            })
            .count();
        let burst = crate::handshake_sources::BURST as usize;
        assert!(
            (40 - burst - 1..=40 - burst).contains(&limited),
            "{limited} of 40 limited"
        );
        let elsewhere: std::net::SocketAddr = "192.0.2.200:51820".parse().unwrap();
        assert!(!matches!(
            decapsulate(&pair.b.table, elsewhere, &init, &mut out),
            Inbound::Dropped(DropReason::HandshakeRateLimited)
        ));
    }

    #[test]
    fn packets_cross_in_both_directions() {
        let pair = Loopback::connected();
        let mut wire_buf = vec![0u8; 2048];
        let mut plain = vec![0u8; 2048];
        for (from, to) in [(&pair.a, &pair.b), (&pair.b, &pair.a)] {
            for len in [20, 64, 1400] {
                let packet = from.packet_to(to, len);
                let datagram = sent(encapsulate(&from.table, &packet, &mut wire_buf));
                assert_eq!(datagram.len(), len + 32);
                match decapsulate(&to.table, from.addr, datagram, &mut plain) {
                    Inbound::ToTun(p) => assert_eq!(p, &packet[..]),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    #[test]
    fn spoofed_inner_source_is_dropped() {
        let pair = Loopback::connected();
        // a claims to be 10.0.0.3, which is not in its allowed-IPs at b.
        let packet = ipv4_packet([10, 0, 0, 3], pair.b.inner, 64);
        let mut wire_buf = vec![0u8; 2048];
        let datagram = sent(encapsulate(&pair.a.table, &packet, &mut wire_buf));
        let mut plain = vec![0u8; 2048];
        assert!(matches!(
            decapsulate(&pair.b.table, pair.a.addr, datagram, &mut plain),
            Inbound::Dropped(DropReason::SpoofedSource)
        ));
    }

    #[test]
    fn endpoint_roams_on_authenticated_traffic_only() {
        let pair = Loopback::connected();
        let packet = pair.a.packet_to(&pair.b, 64);
        let mut wire_buf = vec![0u8; 2048];
        let mut datagram = sent(encapsulate(&pair.a.table, &packet, &mut wire_buf)).to_vec();
        let moved: SocketAddr = "198.51.100.7:3333".parse().unwrap();
        let mut plain = vec![0u8; 2048];
        // Tampered: refused, and the endpoint stays.
        let last = datagram.len() - 1;
        datagram[last] ^= 1;
        assert!(matches!(
            decapsulate(&pair.b.table, moved, &datagram, &mut plain),
            Inbound::Dropped(DropReason::CryptoFailed)
        ));
        assert_eq!(pair.b.peer.state.lock().endpoint, Some(pair.a.addr.into()));
        datagram[last] ^= 1;
        assert!(matches!(
            decapsulate(&pair.b.table, moved, &datagram, &mut plain),
            Inbound::ToTun(_)
        ));
        assert_eq!(pair.b.peer.state.lock().endpoint, Some(moved.into()));
        // A replay from yet another address is refused and does not move it back.
        assert!(matches!(
            decapsulate(&pair.b.table, pair.a.addr, &datagram, &mut plain),
            Inbound::Dropped(DropReason::CryptoFailed)
        ));
        assert_eq!(pair.b.peer.state.lock().endpoint, Some(moved.into()));
    }

    /// What a relay does to a frame: checks the channel and rewrites it to the other side's.
    fn relay(frame: &[u8], expect: u32, rewrite: u32) -> Vec<u8> {
        let (channel, _) = crate::wire::relay_data(frame).expect("a relay frame");
        assert_eq!(channel, expect);
        let mut out = frame.to_vec();
        write_relay_header(&mut out, rewrite);
        out
    }

    #[test]
    fn a_handshake_and_data_cross_a_relay_and_replies_go_back_through_it() {
        let pair = Loopback::new();
        let relay_addr: SocketAddr = "203.0.113.9:3479".parse().unwrap();
        let (chan_a, chan_b) = (0x0a0a_0a0a, 0x0b0b_0b0b);
        pair.a.peer.state.lock().endpoint = Some(Endpoint::relayed(relay_addr, chan_a));
        // b knows no path to a yet: the relayed handshake gives it one.
        pair.b.peer.state.lock().endpoint = None;
        let packet = pair.a.packet_to(&pair.b, 100);
        let mut out = vec![0u8; 2048];
        // a → relay: the initiation, framed.
        let Outbound::Send { datagram, to } = encapsulate(&pair.a.table, &packet, &mut out) else {
            panic!("expected a handshake initiation");
        };
        assert_eq!(to, relay_addr);
        assert_eq!(
            datagram.len(),
            crate::wire::HANDSHAKE_INIT_LEN + RELAY_HEADER_LEN
        );
        let at_b = relay(datagram, chan_a, chan_b);
        // b answers through the relay, on its own channel, and now sends there.
        let mut buf = vec![0u8; 2048];
        let Inbound::Reply { datagram, to, .. } =
            decapsulate(&pair.b.table, relay_addr, &at_b, &mut buf)
        else {
            panic!("expected a handshake response");
        };
        assert_eq!(to, relay_addr);
        assert_eq!(
            pair.b.peer.state.lock().endpoint,
            Some(Endpoint::relayed(relay_addr, chan_b))
        );
        let at_a = relay(datagram, chan_b, chan_a);
        // a completes the handshake; its queued packet leaves framed.
        let mut buf = vec![0u8; 2048];
        let Inbound::Reply {
            peer: Some(peer), ..
        } = decapsulate(&pair.a.table, relay_addr, &at_a, &mut buf)
        else {
            panic!("expected the handshake to complete");
        };
        let mut flushed = vec![0u8; 2048];
        let (queued, to) = flush_queued(&peer, &mut flushed).expect("the queued packet");
        assert_eq!(to, relay_addr);
        let at_b = relay(queued, chan_a, chan_b);
        let mut plain = vec![0u8; 2048];
        match decapsulate(&pair.b.table, relay_addr, &at_b, &mut plain) {
            Inbound::ToTun(p) => assert_eq!(p, &packet[..]),
            other => panic!("unexpected {other:?}"),
        }
        // Data both ways from now on.
        let back = pair.b.packet_to(&pair.a, 1400);
        let Outbound::Send { datagram, .. } = encapsulate(&pair.b.table, &back, &mut out) else {
            panic!("expected data");
        };
        assert_eq!(datagram.len(), 1400 + 32 + RELAY_HEADER_LEN);
        let at_a = relay(datagram, chan_b, chan_a);
        match decapsulate(&pair.a.table, relay_addr, &at_a, &mut plain) {
            Inbound::ToTun(p) => assert_eq!(p, &back[..]),
            other => panic!("unexpected {other:?}"),
        }
        // A relayed datagram does not move a peer that is reached directly onto the relay.
        let direct_b: SocketAddr = "198.51.100.20:4000".parse().unwrap();
        pair.a.peer.state.lock().endpoint = Some(Endpoint::direct(direct_b));
        let relayed = sent(encapsulate(&pair.b.table, &back, &mut out)).to_vec();
        let at_a = relay(&relayed, chan_b, chan_a);
        assert!(matches!(
            decapsulate(&pair.a.table, relay_addr, &at_a, &mut plain),
            Inbound::ToTun(_)
        ));
        assert_eq!(
            pair.a.peer.state.lock().endpoint,
            Some(Endpoint::direct(direct_b))
        );
        // Nor onto another relay than the one chosen for it.
        let other_relay = Endpoint::relayed("203.0.113.10:3479".parse().unwrap(), 5);
        pair.a.peer.state.lock().endpoint = Some(other_relay);
        let relayed = sent(encapsulate(&pair.b.table, &back, &mut out)).to_vec();
        let at_a = relay(&relayed, chan_b, chan_a);
        assert!(matches!(
            decapsulate(&pair.a.table, relay_addr, &at_a, &mut plain),
            Inbound::ToTun(_)
        ));
        assert_eq!(pair.a.peer.state.lock().endpoint, Some(other_relay));
        // A direct datagram from b moves a's endpoint off the relay (roaming).
        pair.b.peer.state.lock().endpoint = Some(Endpoint::direct(pair.b.addr));
        let direct = sent(encapsulate(&pair.b.table, &back, &mut out)).to_vec();
        assert!(matches!(
            decapsulate(&pair.a.table, pair.b.addr, &direct, &mut plain),
            Inbound::ToTun(_)
        ));
        assert_eq!(
            pair.a.peer.state.lock().endpoint,
            Some(Endpoint::direct(pair.b.addr))
        );
    }

    #[test]
    fn relayed_control_frames_and_nested_relay_headers() {
        let pair = Loopback::connected();
        let relay_addr: SocketAddr = "203.0.113.9:3479".parse().unwrap();
        let mut frame = vec![0u8; 8];
        write_relay_header(&mut frame, 7);
        frame.extend_from_slice(b"LRpb probe");
        let mut out = vec![0u8; 2048];
        assert!(matches!(
            decapsulate(&pair.b.table, relay_addr, &frame, &mut out),
            Inbound::Control
        ));
        let (from, payload) = control_payload(relay_addr, &frame);
        assert_eq!(from, Endpoint::relayed(relay_addr, 7));
        assert_eq!(payload, b"LRpb probe");
        // A relay header inside a relay header is refused, not unwrapped again.
        let mut nested = frame[..8].to_vec();
        nested.extend_from_slice(&frame);
        assert!(matches!(
            decapsulate(&pair.b.table, relay_addr, &nested, &mut out),
            Inbound::Dropped(DropReason::MalformedDatagram)
        ));
    }

    #[test]
    fn unroutable_and_unknown_are_counted_drops() {
        let pair = Loopback::new();
        let mut out = vec![0u8; 2048];
        let packet = ipv4_packet(pair.a.inner, [10, 0, 0, 9], 64);
        assert!(matches!(
            encapsulate(&pair.a.table, &packet, &mut out),
            Outbound::Dropped(DropReason::NoRoute)
        ));
        assert!(matches!(
            encapsulate(&pair.a.table, &[0x70; 40], &mut out),
            Outbound::Dropped(DropReason::InvalidTunPacket)
        ));
        let mut data = vec![0u8; 64];
        data[0] = 4;
        data[4..8].copy_from_slice(&(0x77u32 << 8).to_le_bytes());
        assert!(matches!(
            decapsulate(&pair.b.table, pair.a.addr, &data, &mut out),
            Inbound::Dropped(DropReason::UnknownPeer)
        ));
        // A handshake initiation with a bad MAC is refused before any expensive work.
        let mut init = vec![0u8; 148];
        init[0] = 1;
        assert!(matches!(
            decapsulate(&pair.b.table, pair.a.addr, &init, &mut out),
            Inbound::Dropped(DropReason::CryptoFailed)
        ));
        assert!(matches!(
            decapsulate(&pair.b.table, pair.a.addr, b"\x00\x01STUN-ish", &mut out),
            Inbound::Control
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let pair = Loopback::connected();
        let mut out = vec![0u8; 2048];
        let mut state = 0x1234_5678_9abc_def0u64;
        for i in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|j| (state >> (j % 56)) as u8).collect();
            // Half of them with WireGuard-looking headers.
            if i % 2 == 0 && len >= 4 {
                bytes[0] = (state % 5) as u8;
                bytes[1..4].fill(0);
            }
            let _ = decapsulate(&pair.b.table, pair.a.addr, &bytes, &mut out);
            let _ = encapsulate(&pair.a.table, &bytes, &mut out);
        }
    }
}
