//! The reader thread behind each of the daemon's own UDP sockets (local-party announcements,
//! the server browser): datagrams go to the control thread, and the thread ends when the
//! socket's owner is dropped.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

/// Reads the socket `socket` picks out of `owner` on a new thread named `name`, handing each
/// datagram (up to `max_len` bytes) to `deliver` until it returns false, the socket fails, or
/// `owner` has no other holder. The socket needs a read timeout: each one is a chance to
/// notice the owner was dropped (the party was left, or the daemon stops).
pub fn spawn<T: Send + Sync + 'static>(
    name: &str,
    owner: Arc<T>,
    socket: impl Fn(&T) -> &UdpSocket + Send + 'static,
    max_len: usize,
    mut deliver: impl FnMut(SocketAddr, &[u8]) -> bool + Send + 'static,
) -> io::Result<()> {
    let thread = name.to_owned();
    std::thread::Builder::new().name(thread).spawn(move || {
        let mut buf = vec![0u8; max_len];
        loop {
            match socket(&owner).recv_from(&mut buf) {
                Ok((n, from)) => {
                    if !deliver(from, &buf[..n]) {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if Arc::strong_count(&owner) == 1 {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(thread = %std::thread::current().name().unwrap_or("?"), error = %e, "socket failed; no longer reading it");
                    return;
                }
            }
        }
    })?;
    Ok(())
}
