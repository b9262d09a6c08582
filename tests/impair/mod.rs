//! Loss, delay and reordering on one link of a lab, in userspace: `tc netem`'s job, for
//! kernels built without it (these machines' is). Packets that the lab namespace routes to or
//! from a subnet are sent into one TUN device instead; a thread reads them, drops some at
//! random, holds the rest for a random delay, and writes them into a second TUN device, from
//! which the kernel routes them on as if nothing had happened. The delay wanders, as a
//! queue's does, keeping packets in order, except for a chosen share that is reordered.
//!
//! ```text
//!   wan ──rule: iif wan / to subnet──► imp-in ─► [drop, hold] ─► imp-out ──► routed as before
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{self, Netns, unique_tag};

/// What a link does to each packet, each way.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Chance of dropping a packet, 0..=1.
    pub loss: f64,
    /// Mean delay.
    pub delay: Duration,
    /// Standard deviation of the delay (normal distribution, cut at zero). The delay wanders
    /// over about [`JITTER_MEMORY`], as a queue's does, so packets close together are delayed
    /// alike and keep their order.
    pub jitter: Duration,
    /// Chance that a packet takes a delay of its own instead, drawn afresh: these overtake
    /// others, or are overtaken.
    pub reorder: f64,
}

/// How long the wandering delay takes to forget where it was (an Ornstein–Uhlenbeck process).
const JITTER_MEMORY: Duration = Duration::from_millis(100);

/// What the link did, for the test's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub passed: u64,
    pub dropped: u64,
    /// Packets that left after one that arrived later.
    pub reordered: u64,
}

/// An impaired link; it passes packets unharmed again (rules gone) when stopped or dropped.
pub struct Impairment {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Counts>>,
    ns: String,
}

/// The table the impaired traffic is looked up in.
const TABLE: &str = "77";

impl Impairment {
    /// Impairs traffic that `ns` forwards between its interface `dev` and `subnet` (the far
    /// side of `dev`), both ways, including what `ns` itself sends there or receives from it.
    pub fn start(ns: &Netns, dev: &str, subnet: &str, spec: Spec) -> Impairment {
        let tag = unique_tag().replace('-', "");
        let names = [format!("lri{tag}"), format!("lro{tag}")];
        // Made in this namespace (the test's), then moved: a TUN device's file stays open
        // across the move, so no thread has to enter the lab's namespace.
        let devices = names.clone().map(|name| {
            let device = tun_rs::DeviceBuilder::new()
                .name(&name)
                .mtu(1500)
                .build_sync()
                .unwrap_or_else(|e| panic!("creating TUN device {name}: {e}"));
            device
                .set_nonblocking(true)
                .unwrap_or_else(|e| panic!("{name} non-blocking: {e}"));
            common::run(None, &["ip", "link", "set", &name, "netns", &ns.name]);
            ns.run(&["ip", "link", "set", &name, "up"]);
            device
        });
        let [inbound, outbound] = &names;
        for sysctl in [
            "net.ipv4.conf.all.rp_filter=0".to_owned(),
            format!("net.ipv4.conf.{outbound}.rp_filter=0"),
            // What comes back out may be from this namespace's own addresses.
            format!("net.ipv4.conf.{outbound}.accept_local=1"),
            // Early demux would tie a packet for a local socket to that socket before routing
            // sends it on its detour, and the kernel refuses to forward such a packet.
            "net.ipv4.ip_early_demux=0".to_owned(),
        ] {
            ns.run(&["sysctl", "-qw", &sysctl]);
        }
        ns.run(&[
            "ip", "route", "add", "default", "dev", inbound, "table", TABLE,
        ]);
        let shown = ns.run(&["ip", "-4", "-o", "addr", "show", "dev", dev]);
        let own = shown
            .split_whitespace()
            .skip_while(|&w| w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("{dev} has no IPv4 address: {shown}"));
        for rule in [
            // What the thread has let through is routed as usual, local delivery included.
            format!("pref 10 iif {outbound} lookup local"),
            format!("pref 11 iif {outbound} lookup main"),
            // ARP for this end of the link must find it local, or the far side has no route.
            format!("pref 12 to {own} lookup local"),
            format!("pref 20 iif {dev} lookup {TABLE}"),
            format!("pref 21 to {subnet} lookup {TABLE}"),
            // Local delivery after the detour, so traffic to this namespace is impaired too.
            "pref 30 lookup local".to_owned(),
        ] {
            let mut argv = vec!["ip", "rule", "add"];
            argv.extend(rule.split_whitespace());
            ns.run(&argv);
        }
        ns.run(&["ip", "rule", "del", "pref", "0"]);

        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let [read, write] = devices;
        let thread = thread::spawn(move || {
            let mut rng = Rng::seeded();
            let mut held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
            let mut counts = Counts::default();
            let (mut next_seq, mut last_sent) = (0u64, None);
            // The wandering part of the delay, in standard deviations, and when it was drawn.
            let (mut wander, mut drawn) = (rng.normal(), Instant::now());
            // When the last packet kept in order leaves: none of the others leaves before it.
            let mut in_order_due = Instant::now();
            let mut buf = vec![0u8; 65536];
            while !stopping.load(Ordering::Relaxed) {
                loop {
                    match read.recv(&mut buf) {
                        Ok(n) => {
                            next_seq += 1;
                            if rng.uniform() < spec.loss {
                                counts.dropped += 1;
                                continue;
                            }
                            let now = Instant::now();
                            let kept =
                                (-(now - drawn).as_secs_f64() / JITTER_MEMORY.as_secs_f64()).exp();
                            wander = kept * wander + (1.0 - kept * kept).sqrt() * rng.normal();
                            drawn = now;
                            let own = rng.uniform() < spec.reorder;
                            let sigmas = if own { rng.normal() } else { wander };
                            let delay =
                                spec.delay.as_secs_f64() + spec.jitter.as_secs_f64() * sigmas;
                            let mut due = now + Duration::from_secs_f64(delay.max(0.0));
                            if !own {
                                due = due.max(in_order_due);
                                in_order_due = due;
                            }
                            held.push(Reverse((due, next_seq, buf[..n].to_vec())));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // The device went with its namespace: the lab is being torn down.
                        Err(_) => return counts,
                    }
                }
                let now = Instant::now();
                while held.peek().is_some_and(|Reverse((due, _, _))| *due <= now) {
                    let Some(Reverse((_, seq, packet))) = held.pop() else {
                        break;
                    };
                    if last_sent.is_some_and(|last| seq < last) {
                        counts.reordered += 1;
                    }
                    last_sent = Some(last_sent.map_or(seq, |last: u64| last.max(seq)));
                    // A full queue on the way out is loss the link would have had too.
                    let _ = write.send(&packet);
                    counts.passed += 1;
                }
                thread::sleep(Duration::from_micros(100));
            }
            counts
        });
        Impairment {
            stop,
            thread: Some(thread),
            ns: ns.name.clone(),
        }
    }

    pub fn stop(mut self) -> Counts {
        self.finish()
    }

    fn finish(&mut self) -> Counts {
        let Some(thread) = self.thread.take() else {
            return Counts::default();
        };
        // Routing as it was; errors ignored, as the namespace may be gone already.
        let ns = Some(self.ns.as_str());
        let _ = common::try_run(ns, &["ip", "rule", "add", "pref", "0", "lookup", "local"]);
        for pref in ["10", "11", "12", "20", "21", "30"] {
            let _ = common::try_run(ns, &["ip", "rule", "del", "pref", pref]);
        }
        self.stop.store(true, Ordering::Relaxed);
        thread.join().unwrap_or_default()
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.finish();
    }
}

/// xorshift64*: plenty for choosing which packets to drop, and no dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal, by Box–Muller.
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}
