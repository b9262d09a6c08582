//! The server browser's socket (see `lanrage_control::servers`): bound to the announcement port
//! on the tunnel interface only, so that everything it reads came through WireGuard from a
//! member, whose virtual IP is then its identity; what arrives goes to the control thread.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use lanrage_control::servers::{MAX_DATAGRAM, PORT};
use socket2::{Domain, Protocol, Socket, Type};

pub struct ServerLink {
    socket: UdpSocket,
}

impl ServerLink {
    /// Binds the announcement port on `interface` (the tunnel).
    pub fn open(interface: &str) -> io::Result<Arc<ServerLink>> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.bind_device(Some(interface.as_bytes()))?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT).into())?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        Ok(Arc::new(ServerLink {
            socket: socket.into(),
        }))
    }

    /// Sends `datagram` to a member's announcement port.
    pub fn send(&self, member: Ipv4Addr, datagram: &[u8]) {
        if let Err(e) = self.socket.send_to(datagram, (member, PORT)) {
            tracing::debug!(%member, error = %e, "server announcement not sent");
        }
    }

    /// Reads announcements on a new thread until the link is dropped.
    pub fn spawn_reader(self: &Arc<Self>, tx: Sender<(SocketAddr, Vec<u8>)>) -> io::Result<()> {
        let link = self.clone();
        std::thread::Builder::new()
            .name("lanrage-servers".into())
            .spawn(move || {
                let mut buf = vec![0u8; MAX_DATAGRAM + 1];
                loop {
                    match link.socket.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            // A full channel: the control thread is behind; drop, the sender
                            // repeats itself in a few seconds.
                            if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                                tx.try_send((from, buf[..n].to_vec()))
                            {
                                return;
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            // The read timeout: a chance to notice the link was dropped.
                            if Arc::strong_count(&link) == 1 {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "server browser socket failed");
                            return;
                        }
                    }
                }
            })?;
        Ok(())
    }
}
