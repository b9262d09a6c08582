//! Port mapping: asks the home router to forward the WireGuard UDP port to us, so that peers
//! can reach us directly even behind a NAT that maps per destination (symmetric), where the
//! reflexive address STUN finds is of no use to anyone else.
//!
//! A [`PortMapper`] runs on its own thread: it finds the default gateway (`/proc/net/route`),
//! tries PCP, then NAT-PMP (both with `crab_nat`), then UPnP IGD (`igd-next`), keeps the
//! mapping renewed at half its lifetime, and removes it when stopped. The control thread reads
//! the current mapping through a [`MappingView`]. Failures are
//! never fatal: they are reported once and tried again every [`RETRY`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

/// How long we ask the router to keep the mapping (renewed at half of it).
const LIFETIME: Duration = Duration::from_secs(3600);
/// After the router offered nothing, or a renewal failed for good.
pub const RETRY: Duration = Duration::from_secs(180);
/// Renewals come no sooner than this, whatever lifetime the router granted.
const MIN_RENEW: Duration = Duration::from_secs(30);
/// A permanent UPnP lease (lifetime 0) is still refreshed this often: routers reboot.
const PERMANENT_REFRESH: Duration = Duration::from_secs(1800);
/// How long an SSDP search for an Internet Gateway Device waits for an answer.
const UPNP_SEARCH: Duration = Duration::from_secs(3);
/// How long [`PortMapper::stop`] waits for the mapping to be removed.
const STOP_WAIT: Duration = Duration::from_secs(3);
/// What the router shows as the mapping's owner (UPnP).
const DESCRIPTION: &str = "LANrage WireGuard";

/// How the router was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Pcp,
    NatPmp,
    Upnp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP IGD",
        })
    }
}

/// A port the router forwards to our WireGuard port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Where peers reach us: the router's external address and the mapped port.
    pub external: SocketAddr,
    pub protocol: Protocol,
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.external, self.protocol)
    }
}

/// The current mapping as the mapper thread last published it; cheap to clone and poll.
#[derive(Debug, Clone, Default)]
pub struct MappingView(Arc<Mutex<Option<Mapping>>>);

impl MappingView {
    pub fn current(&self) -> Option<Mapping> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, mapping: Option<Mapping>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = mapping;
    }
}

/// The port mapping thread; stops (removing the mapping) when dropped.
pub struct PortMapper {
    view: MappingView,
    stop: Option<Sender<()>>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl PortMapper {
    /// Starts mapping UDP `internal_port` (asking for the same external port). `skip_interface`:
    /// our own interface, never the way to the router.
    pub fn start(internal_port: u16, skip_interface: String) -> std::io::Result<PortMapper> {
        let view = MappingView::default();
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (done_tx, done_rx) = bounded::<()>(1);
        let worker = Worker {
            port: NonZeroU16::new(internal_port).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "port 0 cannot be mapped")
            })?,
            skip_interface,
            view: view.clone(),
            stop: stop_rx,
            reported_none: false,
        };
        let thread = std::thread::Builder::new()
            .name("lanrage-portmap".into())
            .spawn(move || {
                worker.run();
                let _ = done_tx.send(());
            })?;
        Ok(PortMapper {
            view,
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    /// A handle on the current mapping for another thread.
    pub fn view(&self) -> MappingView {
        self.view.clone()
    }

    /// Removes the mapping and ends the thread, waiting at most [`STOP_WAIT`] (a router that
    /// does not answer must not hold up the daemon's exit).
    pub fn stop(&mut self) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        drop(stop);
        match self.done.recv_timeout(STOP_WAIT) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                tracing::debug!("port mapping thread still busy; not waiting for it");
            }
        }
        self.view.set(None);
    }
}

impl Drop for PortMapper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A mapping held at the router, with what it takes to renew and remove it.
enum Held {
    /// PCP or NAT-PMP.
    Pmp(crab_nat::PortMapping),
    Upnp {
        gateway: Box<igd_next::Gateway>,
        local: SocketAddr,
        external_port: u16,
        lease: u32,
    },
}

struct Worker {
    port: NonZeroU16,
    skip_interface: String,
    view: MappingView,
    stop: Receiver<()>,
    /// "No port mapping" was said since the last success (said once, then quietly retried).
    reported_none: bool,
}

impl Worker {
    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::warn!(error = %e, "no port mapping: cannot start its runtime");
                return;
            }
        };
        loop {
            let Some((mut held, mapping)) = self.acquire(&runtime) else {
                if self.sleep(RETRY) {
                    return;
                }
                continue;
            };
            self.reported_none = false;
            tracing::info!(external = %mapping.external, protocol = %mapping.protocol,
                port = self.port, "port mapped by the router");
            self.view.set(Some(mapping));
            loop {
                if self.sleep(renew_after(held.lifetime())) {
                    held.remove(&runtime);
                    return;
                }
                match held.renew(&runtime) {
                    Ok(external) if external == mapping.external => {
                        tracing::debug!(%external, "port mapping renewed");
                    }
                    Ok(external) => {
                        // The router moved us (new external address, say): tell the party.
                        let renewed = Mapping {
                            external,
                            ..mapping
                        };
                        tracing::info!(%renewed, "port mapping changed on renewal");
                        self.view.set(Some(renewed));
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "port mapping renewal failed; mapping again");
                        self.view.set(None);
                        break;
                    }
                }
            }
        }
    }

    /// Waits `d`; true when told to stop.
    fn sleep(&self, d: Duration) -> bool {
        !matches!(self.stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    /// PCP, then NAT-PMP, then UPnP IGD.
    fn acquire(&mut self, runtime: &tokio::runtime::Runtime) -> Option<(Held, Mapping)> {
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        let Some(gateway) = default_gateway(&routes, &self.skip_interface) else {
            self.report_none("no default gateway");
            return None;
        };
        let Some(local) = local_address_toward(gateway) else {
            self.report_none("no local address toward the gateway");
            return None;
        };
        let mut why = Vec::new();
        match runtime.block_on(pmp_map(gateway, local, self.port)) {
            Ok(pair) => return Some(pair),
            Err(e) => why.push(e),
        }
        match upnp_map(local, self.port) {
            Ok(pair) => return Some(pair),
            Err(e) => why.push(format!("UPnP: {e}")),
        }
        self.report_none(&why.join("; "));
        None
    }

    fn report_none(&mut self, why: &str) {
        if std::mem::replace(&mut self.reported_none, true) {
            tracing::debug!(why, "still no port mapping");
        } else {
            tracing::info!(
                why,
                retry_secs = RETRY.as_secs(),
                "no port mapping: the router offers neither PCP, NAT-PMP nor UPnP"
            );
        }
    }
}

/// Quick retries: a router that answers does so within milliseconds, and one that does not
/// must not hold up UPnP.
fn pmp_timeouts() -> crab_nat::TimeoutConfig {
    crab_nat::TimeoutConfig {
        initial_timeout: Duration::from_millis(250),
        max_retries: 2,
        max_retry_timeout: Some(Duration::from_secs(1)),
    }
}

fn pmp_options(port: NonZeroU16) -> crab_nat::PortMappingOptions {
    crab_nat::PortMappingOptions {
        external_port: Some(port),
        lifetime_seconds: Some(LIFETIME.as_secs() as u32),
        timeout_config: Some(pmp_timeouts()),
    }
}

/// PCP, and NAT-PMP if PCP got nowhere.
async fn pmp_map(
    gateway: Ipv4Addr,
    local: Ipv4Addr,
    port: NonZeroU16,
) -> Result<(Held, Mapping), String> {
    use crab_nat::{InternetProtocol, natpmp, pcp};
    let gw = crab_nat::GatewayAddress::IpV4(gateway);
    let pcp_error = match pcp::port_mapping(
        pcp::BaseMapRequest::new(gw, IpAddr::V4(local), InternetProtocol::Udp, port),
        None,
        None,
        pmp_options(port),
    )
    .await
    {
        Ok(mapping) => return pmp_held(mapping, Protocol::Pcp),
        Err(e) => e,
    };
    match natpmp::port_mapping(gw, InternetProtocol::Udp, port, pmp_options(port)).await {
        Ok(mapping) => {
            // NAT-PMP tells the external address in a request of its own.
            let external = natpmp::external_address(gw, Some(pmp_timeouts()))
                .await
                .map_err(|e| format!("NAT-PMP mapped, but no external address: {e}"))?;
            let mapping_out = Mapping {
                external: SocketAddr::new(IpAddr::V4(external), mapping.external_port().get()),
                protocol: Protocol::NatPmp,
            };
            Ok((Held::Pmp(mapping), mapping_out))
        }
        Err(e) => Err(format!("PCP: {pcp_error}; NAT-PMP: {e}")),
    }
}

fn pmp_held(mapping: crab_nat::PortMapping, protocol: Protocol) -> Result<(Held, Mapping), String> {
    let crab_nat::PortMappingType::Pcp { external_ip, .. } = mapping.mapping_type() else {
        return Err("PCP answered as NAT-PMP".into());
    };
    let out = Mapping {
        external: SocketAddr::new(external_ip.to_canonical(), mapping.external_port().get()),
        protocol,
    };
    Ok((Held::Pmp(mapping), out))
}

/// UPnP IGD: an SSDP search on the LAN, then AddPortMapping (the same external port if free,
/// else any).
fn upnp_map(local: Ipv4Addr, port: NonZeroU16) -> Result<(Held, Mapping), String> {
    use igd_next::{PortMappingProtocol, SearchOptions};
    let gateway = igd_next::search_gateway(SearchOptions {
        bind_addr: SocketAddr::new(IpAddr::V4(local), 0),
        timeout: Some(UPNP_SEARCH),
        single_search_timeout: Some(UPNP_SEARCH),
        ..SearchOptions::default()
    })
    .map_err(|e| e.to_string())?;
    let local = SocketAddr::new(IpAddr::V4(local), port.get());
    let mut lease = LIFETIME.as_secs() as u32;
    let external_port = match gateway.add_port(
        PortMappingProtocol::UDP,
        port.get(),
        local,
        lease,
        DESCRIPTION,
    ) {
        Ok(()) => port.get(),
        Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) => {
            lease = 0;
            gateway
                .add_port(PortMappingProtocol::UDP, port.get(), local, 0, DESCRIPTION)
                .map_err(|e| e.to_string())?;
            port.get()
        }
        Err(_) => gateway
            .add_any_port(PortMappingProtocol::UDP, local, lease, DESCRIPTION)
            .map_err(|e| e.to_string())?,
    };
    let external_ip = match gateway.get_external_ip() {
        Ok(ip) => ip,
        Err(e) => {
            let _ = gateway.remove_port(PortMappingProtocol::UDP, external_port);
            return Err(format!("mapped, but no external address: {e}"));
        }
    };
    let mapping = Mapping {
        external: SocketAddr::new(external_ip, external_port),
        protocol: Protocol::Upnp,
    };
    Ok((
        Held::Upnp {
            gateway: Box::new(gateway),
            local,
            external_port,
            lease,
        },
        mapping,
    ))
}

impl Held {
    /// The lifetime granted (0: permanent).
    fn lifetime(&self) -> Duration {
        match self {
            Held::Pmp(m) => Duration::from_secs(m.lifetime().into()),
            Held::Upnp { lease, .. } => Duration::from_secs((*lease).into()),
        }
    }

    /// Asks for the mapping again; the external address it now has.
    fn renew(&mut self, runtime: &tokio::runtime::Runtime) -> Result<SocketAddr, String> {
        match self {
            Held::Pmp(m) => {
                runtime.block_on(m.renew()).map_err(|e| e.to_string())?;
                let ip = match m.mapping_type() {
                    crab_nat::PortMappingType::Pcp { external_ip, .. } => {
                        external_ip.to_canonical()
                    }
                    crab_nat::PortMappingType::NatPmp => runtime
                        .block_on(crab_nat::natpmp::external_address(
                            m.gateway(),
                            Some(pmp_timeouts()),
                        ))
                        .map(IpAddr::V4)
                        .map_err(|e| e.to_string())?,
                };
                Ok(SocketAddr::new(ip, m.external_port().get()))
            }
            Held::Upnp {
                gateway,
                local,
                external_port,
                lease,
            } => {
                gateway
                    .add_port(
                        igd_next::PortMappingProtocol::UDP,
                        *external_port,
                        *local,
                        *lease,
                        DESCRIPTION,
                    )
                    .map_err(|e| e.to_string())?;
                let ip = gateway.get_external_ip().map_err(|e| e.to_string())?;
                Ok(SocketAddr::new(ip, *external_port))
            }
        }
    }

    /// Removes the mapping at the router (best effort).
    fn remove(self, runtime: &tokio::runtime::Runtime) {
        let result = match self {
            Held::Pmp(m) => runtime
                .block_on(m.try_drop())
                .map_err(|(e, _)| e.to_string()),
            Held::Upnp {
                gateway,
                external_port,
                ..
            } => gateway
                .remove_port(igd_next::PortMappingProtocol::UDP, external_port)
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => tracing::info!("port mapping removed"),
            Err(e) => tracing::debug!(error = %e, "port mapping not removed"),
        }
    }
}

/// When to renew a mapping granted for `lifetime`: at half of it, not too often, and now and
/// then even for a permanent one.
fn renew_after(lifetime: Duration) -> Duration {
    if lifetime.is_zero() {
        PERMANENT_REFRESH
    } else {
        (lifetime / 2).max(MIN_RENEW)
    }
}

/// The IPv4 default gateway from `/proc/net/route` (the lowest metric among up default routes
/// through a gateway), ignoring `skip_interface`.
fn default_gateway(routes: &str, skip_interface: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [iface, dest, gateway, flags, _refcnt, _use, metric, mask, ..] = fields[..] else {
                return None;
            };
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let flags = hex(flags)?;
            let up_via_gateway = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            if iface == skip_interface || hex(dest)? != 0 || hex(mask)? != 0 || !up_via_gateway {
                return None;
            }
            // The kernel prints the address as it lies in memory, read as a native integer.
            let gateway = Ipv4Addr::from(hex(gateway)?.to_ne_bytes());
            let metric: u32 = metric.parse().ok()?;
            (!gateway.is_unspecified()).then_some((metric, gateway))
        })
        .min_by_key(|&(metric, _)| metric)
        .map(|(_, gateway)| gateway)
}

/// The address this host uses toward `gateway` (a connected UDP socket sends nothing).
fn local_address_toward(gateway: Ipv4Addr) -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((gateway, crab_nat::GATEWAY_PORT)).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0107A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0007A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn the_default_route_with_the_lowest_metric_wins() {
        let expected = if cfg!(target_endian = "little") {
            Ipv4Addr::new(192, 168, 7, 1)
        } else {
            Ipv4Addr::new(1, 7, 168, 192)
        };
        assert_eq!(default_gateway(ROUTES, "lanrage0"), Some(expected));
    }

    #[test]
    fn our_own_interface_and_non_default_routes_are_ignored() {
        let only_eth = ROUTES.replace("wlan0", "lanrage0");
        let got = default_gateway(&only_eth, "eth0");
        assert!(cfg!(target_endian = "big") || got == Some(Ipv4Addr::new(192, 168, 1, 1)));
        // A link route (no gateway flag) and a down route are not default gateways.
        let none = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth0\t0007A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\n\
                    eth1\t00000000\t0101A8C0\t0002\t0\t0\t100\t00000000\n";
        assert_eq!(default_gateway(none, "lr0"), None);
        assert_eq!(default_gateway("", "lr0"), None);
        assert_eq!(default_gateway("header\ngarbage line\n", "lr0"), None);
    }

    #[test]
    fn mappings_are_renewed_at_half_their_lifetime() {
        assert_eq!(
            renew_after(Duration::from_secs(7200)),
            Duration::from_secs(3600)
        );
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(1800)
        );
        // Short lifetimes do not make the router busy; permanent ones are still refreshed.
        assert_eq!(renew_after(Duration::from_secs(10)), MIN_RENEW);
        assert_eq!(renew_after(Duration::ZERO), PERMANENT_REFRESH);
    }

    #[test]
    fn mappings_read_as_address_and_protocol() {
        let m = Mapping {
            external: "198.18.7.2:51820".parse().unwrap(),
            protocol: Protocol::NatPmp,
        };
        assert_eq!(m.to_string(), "198.18.7.2:51820 via NAT-PMP");
    }

    #[test]
    fn a_mapper_without_a_port_does_not_start() {
        assert!(PortMapper::start(0, "lr0".into()).is_err());
        let view = MappingView::default();
        assert_eq!(view.current(), None);
    }
}
