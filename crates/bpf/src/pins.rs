//! Where a node's datapath lives in bpffs while it outlives its agent.
//!
//! Layout: `/sys/fs/bpf/baton/v{LAYOUT_VERSION}/ns{netns inode}/{interface}/`, holding the TCX
//! links (`link_ingress`, `link_egress`) and the maps that carry connections (`conns`, `config`,
//! `agent`, `stats`, `drops`, `watch`, `responses`: `datapath::PINNED_MAPS`). The layout version in the path keeps an agent from ever reusing
//! maps of another layout; the network namespace keeps apart nodes whose interfaces share a name
//! (every lab node's namespace shares this machine's bpffs).

use std::io;
use std::path::{Path, PathBuf};

use crate::LAYOUT_VERSION;

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// baton's directory in bpffs.
pub const ROOT: &str = "/sys/fs/bpf/baton";
/// The pin of the ingress and egress TCX links.
pub const LINK_INGRESS: &str = "link_ingress";
pub const LINK_EGRESS: &str = "link_egress";

/// The statfs magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory of the datapath on `interface` in network namespace `netns_inum`, for this
/// build's map layout.
pub fn dir(netns_inum: u32, interface: &str) -> PathBuf {
    dir_of_layout(LAYOUT_VERSION, netns_inum, interface)
}

pub fn dir_of_layout(layout: u32, netns_inum: u32, interface: &str) -> PathBuf {
    Path::new(ROOT)
        .join(format!("v{layout}"))
        .join(format!("ns{netns_inum}"))
        .join(interface)
}

/// Pin directories of `interface` in `netns_inum` left by builds of another map layout.
pub fn other_layouts(netns_inum: u32, interface: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(ROOT) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let layout: u32 = name.strip_prefix('v')?.parse().ok()?;
            (layout != LAYOUT_VERSION).then(|| dir_of_layout(layout, netns_inum, interface))
        })
        .filter(|d| d.exists())
        .collect();
    found.sort();
    found
}

/// Mounts bpffs at [`BPFFS`] unless it is mounted there already.
pub fn ensure_bpffs() -> io::Result<()> {
    if is_bpffs(Path::new(BPFFS))? {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS)?;
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constant strings");
    let (source, target, fstype, opts) = (c("bpf"), c(BPFFS), c("bpf"), c("mode=0700"));
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs writes into the struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above: `st` is ours to write, `path` outlives the call.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Removes a pin directory and every pin in it (a pinned link detaches when its last reference
/// goes; a pinned map is freed when no program uses it), then the parents it leaves empty.
/// Returns how many pins were removed.
pub fn remove_dir(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                std::fs::remove_file(entry?.path())?;
                removed += 1;
            }
            std::fs::remove_dir(dir)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    }
    // Parents up to ROOT go when empty (another node's pins keep them).
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if !p.starts_with(ROOT) || std::fs::remove_dir(p).is_err() {
            break;
        }
        parent = p.parent();
    }
    Ok(removed)
}

/// Removes every baton pin of network namespace `netns_inum`, of any layout and interface (a lab
/// removing its nodes). Returns how many pins were removed.
pub fn remove_netns(netns_inum: u32) -> io::Result<usize> {
    let Ok(layouts) = std::fs::read_dir(ROOT) else {
        return Ok(0);
    };
    let mut removed = 0;
    for layout in layouts {
        let ns = layout?.path().join(format!("ns{netns_inum}"));
        let Ok(interfaces) = std::fs::read_dir(&ns) else {
            continue;
        };
        for interface in interfaces {
            removed += remove_dir(&interface?.path())?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_names_layout_namespace_and_interface() {
        assert_eq!(
            dir_of_layout(3, 4026532000, "eth0"),
            Path::new("/sys/fs/bpf/baton/v3/ns4026532000/eth0")
        );
        assert!(dir(1, "x").starts_with(ROOT));
    }
}
