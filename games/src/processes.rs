//! The running processes' names, for detection: the only part of detection that asks the
//! operating system (through `sysinfo`, which reads /proc on Linux and the process list on
//! Windows and macOS).

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

/// Kept between scans: `sysinfo` reuses what it learnt of each process.
pub struct ProcessList {
    system: System,
}

impl Default for ProcessList {
    fn default() -> Self {
        ProcessList::new()
    }
}

impl ProcessList {
    pub fn new() -> Self {
        // sysinfo would otherwise keep a /proc file open per process on the machine, up to
        // half the descriptor limit: a daemon that scans every 2 s for its whole life would
        // hold hundreds of descriptors it needs for sockets. Reopening them costs about a
        // millisecond a scan on a desktop's few hundred processes.
        sysinfo::set_open_files_limit(0);
        ProcessList {
            system: System::new(),
        }
    }

    /// The names of the processes running now (Linux: the 15-byte `comm`; Windows: the image
    /// name, e.g. `war3.exe`). Only names are refreshed, not CPU or memory, to keep a scan
    /// cheap.
    pub fn names(&mut self) -> Vec<String> {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing(),
        );
        self.system
            .processes()
            .values()
            .map(|p| p.name().to_string_lossy().into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_is_among_the_running_processes() {
        let mut list = ProcessList::new();
        let names = list.names();
        assert!(names.len() > 1, "{names:?}");
        let me = std::env::current_exe().unwrap();
        let me = me.file_name().unwrap().to_string_lossy();
        // comm is cut at 15 bytes.
        let prefix: String = me.chars().take(15).collect();
        assert!(names.contains(&prefix), "{prefix} not in {names:?}");
    }
}
