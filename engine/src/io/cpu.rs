//! CPU locality: each worker runs on its own CPUs, and the kernel hands every datagram to
//! the worker on the CPU where it arrived.
//!
//! Without it a datagram lands on whichever socket the 4-tuple hashes to, and the kernel wakes
//! that worker on some other CPU. Waking an idle CPU costs microseconds on bare metal and tens
//! of microseconds in virtual machines whose idle vCPUs halt; a ping pays it at every hop.
//! With it, the softirq that queues a datagram runs on the CPU of the worker that will read
//! it, so the wake-up is a context switch, not an inter-processor interrupt.
//!
//! Worker `i` owns the allowed CPUs `c` with `c % workers == i`, and the reuseport group's
//! classic BPF program returns `cpu % workers`, the index of that worker's socket (sockets join
//! the group in worker order). When some worker would own no CPU (an unusual affinity mask),
//! nothing is pinned and the kernel's flow hash stays in charge.
//!
//! Two exceptions keep throughput. Datagrams longer than [`LOCAL_DATAGRAM_MAX`] (bulk) are
//! spread by the flow hash, so a NIC with one receive queue does not funnel every download
//! into one worker. And a worker under heavy load lets go of its CPUs ([`Governor`]): pinned,
//! it cannot move off a CPU that the applications also need, which cost a third of a single
//! TCP stream's throughput on a 2-core machine.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest datagram steered by CPU: a 256-byte packet and WireGuard's 32 bytes.
pub const LOCAL_DATAGRAM_MAX: u32 = 256 + 32;

/// The CPUs each worker may run on, or `None` when locality cannot be set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuLayout {
    all: Vec<usize>,
    per_worker: Vec<Vec<usize>>,
}

impl CpuLayout {
    /// The layout for `workers` workers over the CPUs this process may use.
    pub fn detect(workers: usize) -> Option<CpuLayout> {
        CpuLayout::over(&allowed_cpus().ok()?, workers)
    }

    /// The layout for `workers` workers over `cpus`: worker `i` gets every CPU `c` with
    /// `c % workers == i`, the same rule the steering program applies.
    pub fn over(cpus: &[usize], workers: usize) -> Option<CpuLayout> {
        if workers == 0 {
            return None;
        }
        let mut per_worker = vec![Vec::new(); workers];
        for &cpu in cpus {
            per_worker[cpu % workers].push(cpu);
        }
        per_worker
            .iter()
            .all(|set| !set.is_empty())
            .then(|| CpuLayout {
                all: cpus.to_vec(),
                per_worker,
            })
    }

    pub fn workers(&self) -> usize {
        self.per_worker.len()
    }

    /// The CPUs of worker `i`.
    pub fn cpus(&self, worker: usize) -> &[usize] {
        &self.per_worker[worker % self.per_worker.len()]
    }

    /// Every CPU the process may use: where a floating worker runs.
    pub fn all(&self) -> &[usize] {
        &self.all
    }
}

/// Where a worker should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On its own CPUs: light load, where wake-ups decide latency.
    Pinned,
    /// Anywhere: heavy load, where CPU time decides throughput.
    Floating,
}

/// Decides a worker's placement from the packets it handles, with hysteresis so that a
/// burst does not make it flap. Sans-IO: the worker feeds it counts and the time.
#[derive(Debug)]
pub struct Governor {
    placement: Placement,
    window_start: Instant,
    packets: u64,
}

impl Governor {
    /// How often the rate is looked at.
    const WINDOW: Duration = Duration::from_millis(100);
    /// Above this many packets per second (both directions) a pinned worker floats: bulk
    /// transfers run at tens of thousands, a party of gamers at a few thousand.
    pub const FLOAT_ABOVE: u64 = 20_000;
    /// Below this a floating worker goes back to its CPUs.
    pub const PIN_BELOW: u64 = 5_000;

    /// A governor for a worker that starts pinned.
    pub fn new(now: Instant) -> Governor {
        Governor {
            placement: Placement::Pinned,
            window_start: now,
            packets: 0,
        }
    }

    pub fn record(&mut self, packets: usize) {
        self.packets += packets as u64;
    }

    /// The new placement, when it changes.
    pub fn poll(&mut self, now: Instant) -> Option<Placement> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < Self::WINDOW {
            return None;
        }
        let per_second = self.packets.saturating_mul(1_000_000) / elapsed.as_micros().max(1) as u64;
        self.window_start = now;
        self.packets = 0;
        let next = match self.placement {
            Placement::Pinned if per_second > Self::FLOAT_ABOVE => Placement::Floating,
            Placement::Floating if per_second < Self::PIN_BELOW => Placement::Pinned,
            same => same,
        };
        (next != self.placement).then(|| {
            self.placement = next;
            next
        })
    }
}

/// The CPUs in this process's affinity mask (taskset, cgroup cpusets).
fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which lives for the whole call; pid 0 is
    // the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the size of the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Restricts the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `allowed_cpus`: all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&cpu| cpu < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` is below CPU_SETSIZE, the size of the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the pointer and size describe `set`, which outlives the call; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The reuseport group's steering, switched with the load. While every worker is pinned,
/// small datagrams go to the worker on their CPU. While any worker floats, everything takes
/// the kernel's flow hash: by CPU, a busy peer's small datagrams (its TCP ACKs) would be
/// spread over workers that no longer sit on those CPUs, reordered, and fought over; ping
/// under a saturating transfer went from ~1.1 ms to ~1.8 ms that way.
pub struct Steering {
    socket: Arc<UdpSocket>,
    workers: usize,
    floating: AtomicUsize,
    /// Serialises program changes, so the last one matches the last count.
    switch: Mutex<()>,
}

impl Steering {
    /// Steers small datagrams by CPU on the group of `socket`, once the whole group is bound.
    pub fn attach(socket: Arc<UdpSocket>, workers: usize) -> io::Result<Steering> {
        attach_program(&socket, workers, true)?;
        Ok(Steering {
            socket,
            workers,
            floating: AtomicUsize::new(0),
            switch: Mutex::new(()),
        })
    }

    /// A worker's placement changed: switch programs when the first worker floats or the
    /// last one is pinned again.
    pub fn placement_changed(&self, placement: Placement) {
        match placement {
            Placement::Floating => self.floating.fetch_add(1, Ordering::AcqRel),
            Placement::Pinned => self.floating.fetch_sub(1, Ordering::AcqRel),
        };
        let _guard = self.switch.lock().unwrap_or_else(|e| e.into_inner());
        let by_cpu = self.floating.load(Ordering::Acquire) == 0;
        if let Err(e) = attach_program(&self.socket, self.workers, by_cpu) {
            tracing::warn!(error = %e, by_cpu, "cannot switch datagram steering");
        }
    }
}

/// With `by_cpu`, datagrams of at most LOCAL_DATAGRAM_MAX bytes go to socket `cpu % workers`;
/// everything else returns `workers`, out of range, which makes the kernel fall back to its
/// flow hash.
fn attach_program(socket: &UdpSocket, workers: usize, by_cpu: bool) -> io::Result<()> {
    let workers = u32::try_from(workers)
        .ok()
        .filter(|&w| w > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad worker count"))?;
    let mut by_cpu_program = [
        bpf(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0),
        jump(
            libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K,
            LOCAL_DATAGRAM_MAX,
            3,
            0,
        ),
        bpf(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        ),
        bpf(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, workers),
        bpf(libc::BPF_RET | libc::BPF_A, 0),
        bpf(libc::BPF_RET | libc::BPF_K, workers),
    ];
    let mut by_hash_program = [bpf(libc::BPF_RET | libc::BPF_K, workers)];
    let program: &mut [libc::sock_filter] = if by_cpu {
        &mut by_cpu_program
    } else {
        &mut by_hash_program
    };
    // The option as bytes, the struct's fields written at their offsets: the kernel copies
    // the padding between them too, which a struct built as a value leaves uninitialised.
    let mut fprog = [0u8; std::mem::size_of::<libc::sock_fprog>()];
    let len = program.len() as u16;
    let filter = program.as_mut_ptr();
    fprog[std::mem::offset_of!(libc::sock_fprog, len)..][..2].copy_from_slice(&len.to_ne_bytes());
    fprog[std::mem::offset_of!(libc::sock_fprog, filter)..][..size_of::<usize>()]
        .copy_from_slice(&(filter as usize).to_ne_bytes());
    // SAFETY: `fprog` is a sock_fprog pointing at `program`, both alive for the call; the
    // kernel copies the program and validates it, and the option length is that of `fprog`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            fprog.as_ptr().cast(),
            fprog.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bpf(code: u32, k: u32) -> libc::sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_owns_the_cpus_the_program_steers_to_it() {
        let layout = CpuLayout::over(&[0, 1, 2, 3, 4], 2).unwrap();
        assert_eq!(layout.cpus(0), &[0, 2, 4]);
        assert_eq!(layout.cpus(1), &[1, 3]);
        assert_eq!(layout.workers(), 2);
    }

    #[test]
    fn heavy_load_floats_and_light_load_pins_again() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut g = Governor::new(t0);
        // A game's trickle: 500 packets/s.
        g.record(50);
        assert_eq!(g.poll(ms(100)), None);
        // A download: 100k packets/s.
        g.record(10_000);
        assert_eq!(g.poll(ms(150)), None, "decides only once per window");
        assert_eq!(g.poll(ms(200)), Some(Placement::Floating));
        // Between the thresholds nothing changes.
        g.record(1_000);
        assert_eq!(g.poll(ms(300)), None);
        // Quiet for ten seconds: the next wake-up pins.
        assert_eq!(g.poll(ms(10_300)), Some(Placement::Pinned));
        assert_eq!(g.poll(ms(10_400)), None);
    }

    #[test]
    fn no_layout_when_a_worker_would_own_no_cpu() {
        // taskset -c 0,2 with two workers: both CPUs steer to worker 0.
        assert_eq!(CpuLayout::over(&[0, 2], 2), None);
        assert_eq!(CpuLayout::over(&[0, 1], 0), None);
        assert_eq!(CpuLayout::over(&[], 1), None);
    }

    #[test]
    fn this_process_has_a_layout_for_one_worker() {
        assert_eq!(CpuLayout::detect(1).unwrap().workers(), 1);
    }

    #[test]
    fn datagrams_reach_the_socket_of_the_cpu_they_arrive_on() {
        let cpus = allowed_cpus().unwrap();
        let workers = cpus.len().min(2);
        let sockets = crate::io::udp::bind_group(0, workers, 0, 1 << 16).unwrap();
        let steering =
            Steering::attach(Arc::new(sockets[0].try_clone().unwrap()), workers).unwrap();
        // A worker floats and is pinned again: back to steering by CPU.
        steering.placement_changed(Placement::Floating);
        steering.placement_changed(Placement::Pinned);
        let port = sockets[0].local_addr().unwrap().port();
        for &cpu in &cpus[..workers] {
            let sender = std::thread::spawn(move || {
                pin_current_thread(&[cpu]).unwrap();
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.send_to(&[cpu as u8], ("127.0.0.1", port)).unwrap();
            });
            sender.join().unwrap();
            // Loopback runs the receive softirq on the sending CPU.
            let expect = &sockets[cpu % workers];
            expect.set_nonblocking(false).unwrap();
            expect
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 4];
            let (n, _) = expect.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!("socket {} got nothing from CPU {cpu}: {e}", cpu % workers)
            });
            assert_eq!(&buf[..n], &[cpu as u8]);
        }
    }

    #[test]
    fn bulk_datagrams_and_all_while_floating_fall_back_to_the_flow_hash() {
        let sockets = crate::io::udp::bind_group(0, 2, 0, 1 << 16).unwrap();
        let steering = Steering::attach(Arc::new(sockets[0].try_clone().unwrap()), 2).unwrap();
        let port = sockets[0].local_addr().unwrap().port();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The programs' out-of-range answer must mean "hash", not "drop".
        let arrives = |payload: &[u8]| {
            sender.send_to(payload, ("127.0.0.1", port)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut buf = vec![0u8; payload.len() + 1];
            while Instant::now() < deadline {
                for s in &sockets {
                    if s.recv_from(&mut buf)
                        .is_ok_and(|(n, _)| buf[..n] == *payload)
                    {
                        return true;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            false
        };
        let bulk = vec![7u8; LOCAL_DATAGRAM_MAX as usize + 1];
        assert!(arrives(&bulk), "a bulk datagram reached no socket");
        steering.placement_changed(Placement::Floating);
        assert!(
            arrives(&[1, 2, 3]),
            "a small datagram reached no socket while floating"
        );
        assert!(
            arrives(&bulk),
            "a bulk datagram reached no socket while floating"
        );
    }
}
