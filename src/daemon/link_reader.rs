//! The reader threads behind the daemon's own UDP sockets (local-party announcements, the
//! server browser): datagrams go to the control thread until the link is closed, and no
//! reader outlives the daemon.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A set of sockets read by threads of their own.
pub trait Link: Send + Sync + 'static {
    /// Set when the link is closed: its readers end.
    fn closed(&self) -> &AtomicBool;
}

/// A link and the threads reading it. Closing it, or dropping it, tells the readers to end,
/// which each notices within its socket's read timeout (every socket needs one); the sockets
/// close with the last of them. Dereferences to the link.
pub struct Reading<T: Link> {
    link: Arc<T>,
    readers: Vec<JoinHandle<()>>,
}

impl<T: Link> Reading<T> {
    pub fn new(link: T) -> Reading<T> {
        Reading {
            link: Arc::new(link),
            readers: Vec::new(),
        }
    }

    /// Reads the socket `socket` picks out of the link on a new thread named `name`, handing
    /// each datagram (up to `max_len` bytes) to `deliver` until it returns false, the socket
    /// fails, or the link is closed.
    pub fn spawn(
        &mut self,
        name: &str,
        socket: impl Fn(&T) -> &UdpSocket + Send + 'static,
        max_len: usize,
        mut deliver: impl FnMut(SocketAddr, &[u8]) -> bool + Send + 'static,
    ) -> io::Result<()> {
        let link = self.link.clone();
        let reader = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut buf = vec![0u8; max_len];
                while !link.closed().load(Ordering::Relaxed) {
                    match socket(&link).recv_from(&mut buf) {
                        Ok((n, from)) => {
                            if !deliver(from, &buf[..n]) {
                                return;
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => {
                            tracing::warn!(thread = %std::thread::current().name().unwrap_or("?"), error = %e, "socket failed; no longer reading it");
                            return;
                        }
                    }
                }
            })?;
        self.readers.push(reader);
        Ok(())
    }

    /// Closes the link and hands back its readers, to be waited for later (each ends within
    /// a read timeout).
    pub fn close(mut self) -> Vec<JoinHandle<()>> {
        self.link.closed().store(true, Ordering::Relaxed);
        std::mem::take(&mut self.readers)
    }
}

impl<T: Link> Deref for Reading<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.link
    }
}

impl<T: Link> Drop for Reading<T> {
    fn drop(&mut self) {
        self.link.closed().store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    struct Pair(UdpSocket, UdpSocket, AtomicBool);

    impl Link for Pair {
        fn closed(&self) -> &AtomicBool {
            &self.2
        }
    }

    #[test]
    fn readers_end_and_the_sockets_close_when_the_link_is_closed() {
        let socket = || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s
        };
        let mut reading = Reading::new(Pair(socket(), socket(), AtomicBool::new(false)));
        let addrs = [
            reading.0.local_addr().unwrap(),
            reading.1.local_addr().unwrap(),
        ];
        let (tx, rx) = crossbeam_channel::unbounded();
        for second in [false, true] {
            let tx = tx.clone();
            reading
                .spawn(
                    "test-reader",
                    move |p: &Pair| if second { &p.1 } else { &p.0 },
                    64,
                    move |_, d| tx.send(d.to_vec()).is_ok(),
                )
                .unwrap();
        }
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for addr in addrs {
            sender.send_to(b"hello", addr).unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"hello");
        }
        let closed = Instant::now();
        for reader in reading.close() {
            reader.join().unwrap();
        }
        assert!(closed.elapsed() < Duration::from_secs(2));
        // The ports are free again: the sockets closed with the link.
        for addr in addrs {
            UdpSocket::bind(addr).expect("the link's sockets are closed");
        }
    }
}
