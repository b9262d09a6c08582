//! The TUN interface, opened multi-queue so each worker reads and writes its own queue, with
//! virtio-net header offload so the kernel hands over TCP super-packets (GSO) and takes back
//! coalesced ones (GRO) — one system call for many packets.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tun_rs::{DeviceBuilder, SyncDevice};

/// Headroom in front of every packet buffer for the virtio-net header.
pub const OFFLOAD_HEADROOM: usize = tun_rs::VIRTIO_NET_HDR_LEN;

/// WireGuard's customary MTU: 1500 less the IPv6 + UDP + WireGuard overhead.
pub const DEFAULT_MTU: u16 = 1420;

/// Largest interface MTU the packet buffers are sized for.
pub const MAX_MTU: usize = 9000;

pub struct TunDevice {
    name: String,
    queues: Vec<Arc<SyncDevice>>,
    offload: bool,
}

impl TunDevice {
    /// Creates interface `name` with `queues` queues, left down and without addresses (the
    /// owner configures it, as with any WireGuard interface). Offload is used when the kernel
    /// supports it.
    ///
    /// `queue_len` sets the packets each queue's ring holds (the interface's txqueuelen;
    /// `None` keeps the kernel's 500). The kernel's TUN device never pushes back on the
    /// sender: a full ring drops. So the ring is where a game packet waits behind a bulk
    /// transfer, and with offload each slot may hold a 64 KiB TCP super-packet. Measured with
    /// `scripts/scaling.sh` and `scripts/bench.sh`: 16 slots cut ping under 16 TCP flows on 16
    /// cores from 8.9–9.9 ms to 2.4–2.9 ms, but on 2 cores 100-byte datagrams at 150k/s then
    /// lost 57% (128 slots: 8%; 500: 1%), because a ring counts packets, not bytes. Hence a
    /// setting, not a default.
    pub fn create(name: &str, queues: usize, mtu: u16, queue_len: Option<u32>) -> io::Result<Self> {
        if usize::from(mtu) > MAX_MTU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MTU {mtu} is above the supported maximum of {MAX_MTU}"),
            ));
        }
        let build = |offload: bool| {
            let mut builder = DeviceBuilder::new()
                .name(name)
                .mtu(mtu)
                .multi_queue(true)
                .offload(offload)
                .inherit_enable_state();
            if let Some(len) = queue_len {
                builder = builder.tx_queue_len(len);
            }
            builder.build_sync()
        };
        let (first, offload) = match build(true) {
            Ok(dev) => (dev, true),
            Err(e) => {
                tracing::warn!(error = %e, "TUN offload unavailable, falling back to one packet per read");
                (build(false)?, false)
            }
        };
        let mut devices = Vec::with_capacity(queues.max(1));
        for _ in 1..queues.max(1) {
            devices.push(first.try_clone()?);
        }
        devices.insert(0, first);
        let mut out = Vec::with_capacity(devices.len());
        for dev in devices {
            dev.set_nonblocking(true)?;
            out.push(Arc::new(dev));
        }
        let name = out[0].name()?;
        Ok(TunDevice {
            name,
            queues: out,
            offload,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn queue(&self, i: usize) -> Arc<SyncDevice> {
        self.queues[i % self.queues.len()].clone()
    }

    /// A handle for the interface's addresses that stays with the owner once the engine has
    /// taken the device.
    pub fn addresses(&self) -> TunAddresses {
        TunAddresses(self.queues[0].clone())
    }

    /// Whether reads carry virtio-net headers (and may be GSO super-packets).
    pub fn offload(&self) -> bool {
        self.offload
    }
}

/// Sets the TUN interface's IPv4 address (the party's virtual IP) while the engine runs.
#[derive(Clone)]
pub struct TunAddresses(Arc<SyncDevice>);

impl TunAddresses {
    /// Gives the interface `address/prefix_len` as its only IPv4 address, and brings it up.
    pub fn set_ipv4(&self, address: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        self.0.set_network_address(address, prefix_len, None)?;
        self.0.enabled(true)
    }

    /// Removes the interface's IPv4 addresses (it stays up).
    pub fn clear_ipv4(&self) -> io::Result<()> {
        for address in self.0.addresses()? {
            if address.is_ipv4() {
                self.0.remove_address(address)?;
            }
        }
        Ok(())
    }
}
