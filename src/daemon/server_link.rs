//! The server browser's sockets (see `lanrage_control::servers`), bound to the tunnel interface
//! only, so that everything they read came through WireGuard from a member, whose virtual IP is
//! then its identity: one on the announcement port, one on Minecraft's LAN-world port (joined
//! to its group on the tunnel; games on this host bound to the port still get every packet).
//! A third socket asks the servers this host runs for their status (`lanrage_games::a2s`).
//! What arrives goes to the control thread.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use lanrage_control::servers::{MAX_DATAGRAM, MINECRAFT_GROUP, MINECRAFT_PORT, PORT};
use lanrage_games::a2s;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use super::link_reader::{Link, Reading};

/// Which socket a datagram came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerDatagram {
    /// A member's announcement of the servers it hosts.
    Announcement,
    /// A Minecraft LAN world announcement.
    MinecraftLan,
    /// A server on this host answering a status query.
    QueryReply,
}

pub struct ServerLink {
    announcements: UdpSocket,
    minecraft: UdpSocket,
    /// Any address, any interface: the servers queried are this host's own.
    queries: UdpSocket,
    closed: AtomicBool,
}

impl Link for ServerLink {
    fn closed(&self) -> &AtomicBool {
        &self.closed
    }
}

fn tunnel_socket(interface: &str, port: u16) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    if port == MINECRAFT_PORT {
        // Minecraft itself listens here too (its sockets set SO_REUSEADDR).
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
    }
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    Ok(socket)
}

impl ServerLink {
    /// Binds both ports on `interface` (the tunnel, with index `index`), and reads each socket
    /// on a thread of its own, handing what arrives to `tx`, until the link is closed.
    pub fn open(
        interface: &str,
        index: u32,
        tx: Sender<(ServerDatagram, SocketAddr, Vec<u8>)>,
    ) -> io::Result<Reading<ServerLink>> {
        let announcements = tunnel_socket(interface, PORT)?;
        let minecraft = tunnel_socket(interface, MINECRAFT_PORT)?;
        minecraft.join_multicast_v4_n(&MINECRAFT_GROUP, &InterfaceIndexOrAddress::Index(index))?;
        let queries = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        queries.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut reading = Reading::new(ServerLink {
            announcements: announcements.into(),
            minecraft: minecraft.into(),
            queries,
            closed: AtomicBool::new(false),
        });
        for kind in [
            ServerDatagram::Announcement,
            ServerDatagram::MinecraftLan,
            ServerDatagram::QueryReply,
        ] {
            let tx = tx.clone();
            let max_len = match kind {
                ServerDatagram::QueryReply => a2s::MAX_REPLY,
                _ => MAX_DATAGRAM + 1,
            };
            reading.spawn(
                "lanrage-servers",
                move |link: &ServerLink| match kind {
                    ServerDatagram::Announcement => &link.announcements,
                    ServerDatagram::MinecraftLan => &link.minecraft,
                    ServerDatagram::QueryReply => &link.queries,
                },
                max_len,
                // A full channel: the control thread is behind; drop, the senders repeat
                // themselves every few seconds.
                move |from, datagram| {
                    !matches!(
                        tx.try_send((kind, from, datagram.to_vec())),
                        Err(TrySendError::Disconnected(_))
                    )
                },
            )?;
        }
        Ok(reading)
    }

    /// Sends a status query to a server on this host.
    pub fn query(&self, server: SocketAddrV4, request: &[u8]) {
        if let Err(e) = self.queries.send_to(request, server) {
            tracing::debug!(%server, error = %e, "server query not sent");
        }
    }

    /// Sends `datagram` to a member's announcement port.
    pub fn send(&self, member: Ipv4Addr, datagram: &[u8]) {
        if let Err(e) = self.announcements.send_to(datagram, (member, PORT)) {
            tracing::debug!(%member, error = %e, "server announcement not sent");
        }
    }
}
