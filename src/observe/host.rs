//! CPU, memory, swap, load, filesystems, uptime and boot id, through sysinfo
//! and `/proc`.

use serde::Serialize;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct HostStats {
    pub cpu_count: usize,
    /// Average use of all CPUs since the previous pass; `None` on the first.
    pub cpu_percent: Option<f32>,
    pub load: [f64; 3],
    pub memory_total: u64,
    /// Total minus available, in bytes.
    pub memory_used: u64,
    pub swap_total: u64,
    pub swap_used: u64,
    pub filesystems: Vec<Filesystem>,
    pub uptime_secs: u64,
    pub boot_id: String,
}

impl HostStats {
    pub fn memory_percent(&self) -> f64 {
        percent(self.memory_used, self.memory_total)
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Filesystem {
    pub mount: String,
    pub fs_type: String,
    pub total: u64,
    pub available: u64,
}

impl Filesystem {
    pub fn used_percent(&self) -> f64 {
        percent(self.total - self.available.min(self.total), self.total)
    }
}

/// Size and free space of the filesystem holding `path` (statvfs), with
/// `mount` set to `path`: the same numbers the disk-full rule uses.
pub fn filesystem_of(path: &std::path::Path) -> std::io::Result<Filesystem> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = st.fragment_size() as u64;
    Ok(Filesystem {
        mount: path.display().to_string(),
        fs_type: String::new(),
        total: st.blocks() as u64 * frsize,
        available: st.blocks_available() as u64 * frsize,
    })
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Filesystem types whose fullness is not a problem (read-only images) or
/// not a filesystem at all.
const IGNORED_FS: &[&str] = &["squashfs", "iso9660", "erofs", "overlay", "nsfs", "proc", "sysfs"];

/// Keeps the sysinfo state between passes, so CPU use is measured over the
/// interval between two passes instead of by sleeping.
pub struct HostProbe {
    system: System,
    primed: bool,
}

impl Default for HostProbe {
    fn default() -> Self {
        let kinds = RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::everything())
            .with_cpu(CpuRefreshKind::nothing().with_cpu_usage());
        Self { system: System::new_with_specifics(kinds), primed: false }
    }
}

impl HostProbe {
    pub fn sample(&mut self) -> Result<HostStats, std::io::Error> {
        self.system.refresh_memory();
        self.system.refresh_cpu_usage();
        let cpu_percent = self.primed.then(|| self.system.global_cpu_usage());
        self.primed = true;
        let load = System::load_average();
        let disks = Disks::new_with_refreshed_list();
        let filesystems = disks
            .list()
            .iter()
            .filter(|d| d.total_space() > 0)
            .filter(|d| !IGNORED_FS.contains(&d.file_system().to_string_lossy().as_ref()))
            .map(|d| Filesystem {
                mount: d.mount_point().display().to_string(),
                fs_type: d.file_system().to_string_lossy().into_owned(),
                total: d.total_space(),
                available: d.available_space(),
            })
            .collect();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_owned();
        Ok(HostStats {
            cpu_count: self.system.cpus().len(),
            cpu_percent,
            load: [load.one, load.five, load.fifteen],
            memory_total: self.system.total_memory(),
            memory_used: self.system.total_memory().saturating_sub(self.system.available_memory()),
            swap_total: self.system.total_swap(),
            swap_used: self.system.used_swap(),
            filesystems,
            uptime_secs: System::uptime(),
            boot_id,
        })
    }
}
