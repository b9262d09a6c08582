//! The multicast socket of local mode (see `lanrage_control::party::local`): announcements
//! go out on every LAN interface, TTL 1, and whatever arrives is handed to the control thread.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::Sender;
use lanrage_control::party::local::{GROUP, MAX_DATAGRAM, PORT};
use socket2::{Domain, Protocol, Socket, Type};

use super::link_reader::{Link, Reading};

pub struct LocalLink {
    socket: UdpSocket,
    /// The addresses of the interfaces announcements go out on.
    interfaces: Vec<Ipv4Addr>,
    closed: AtomicBool,
}

impl Link for LocalLink {
    fn closed(&self) -> &AtomicBool {
        &self.closed
    }
}

impl LocalLink {
    /// Joins the group on every IPv4 interface but loopback and `own` (our tunnel), once per
    /// interface however many addresses it has, and reads
    /// announcements on a new thread, handing them to `tx`, until the link is closed.
    pub fn open(own: &str, tx: Sender<(SocketAddr, Vec<u8>)>) -> io::Result<Reading<LocalLink>> {
        let interfaces = super::lan::ipv4_interfaces(own)?;
        if interfaces.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no LAN interface with an IPv4 address to find party members on",
            ));
        }
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Several programs may listen for announcements on one host.
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT).into())?;
        socket.set_multicast_loop_v4(false)?;
        socket.set_multicast_ttl_v4(1)?;
        for address in &interfaces {
            socket.join_multicast_v4(&GROUP, address)?;
        }
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut reading = Reading::new(LocalLink {
            socket: socket.into(),
            interfaces,
            closed: AtomicBool::new(false),
        });
        reading.spawn(
            "lanrage-lan",
            |link: &LocalLink| &link.socket,
            MAX_DATAGRAM + 1,
            move |from, datagram| tx.send((from, datagram.to_vec())).is_ok(),
        )?;
        Ok(reading)
    }

    /// Sends `datagram` to the group on every interface.
    pub fn send(&self, datagram: &[u8]) {
        let group = SocketAddr::from((GROUP, PORT));
        for address in &self.interfaces {
            let sent = socket2::SockRef::from(&self.socket)
                .set_multicast_if_v4(address)
                .and_then(|()| self.socket.send_to(datagram, group));
            if let Err(e) = sent {
                tracing::debug!(interface = %address, error = %e, "announcement not sent");
            }
        }
    }
}
