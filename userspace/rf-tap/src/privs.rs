//! Giving up root once the programs are attached (`-Z USER`, as tcpdump does): rf-tap then
//! parses untrusted bytes for as long as the capture lasts with no capabilities at all.
//!
//! What still works unprivileged, on open descriptors: the ring buffer and AF_XDP rings, the
//! counters map, the output files, detaching (closing the TCX/XDP link descriptors detaches
//! the programs). What needs a new file later (`--rotate-size`, `--rotate-seconds`) needs its
//! directory writable by the user, which is checked before anything is attached.

use std::{ffi::CString, os::unix::fs::MetadataExt, path::Path};

use anyhow::{bail, Context as _};

/// The account to run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks `name` up in the user database (`root` keeps root).
pub fn account(name: &str) -> anyhow::Result<Account> {
    let c = CString::new(name).context("-Z: a user name has no NUL bytes")?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pw` and `buf`, both ours and sized as passed.
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        bail!("-Z {name}: no such user (give an existing one, or -Z root to keep root)");
    }
    Ok(Account {
        name: name.to_string(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

/// Whether `dir` lets `a` create files (by its mode bits).
pub fn can_create_in(a: &Account, dir: &Path) -> bool {
    if a.uid == 0 {
        return true;
    }
    let Ok(m) = std::fs::metadata(dir) else {
        return false;
    };
    let mode = m.mode();
    let bits = if m.uid() == a.uid {
        mode >> 6
    } else if m.gid() == a.gid {
        mode >> 3
    } else {
        mode
    };
    bits & 0o3 == 0o3
}

/// CAP_DAC_OVERRIDE: writing new files where the user could not (rotation).
pub const CAP_DAC_OVERRIDE: u32 = 1;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets this thread's effective and permitted capabilities to exactly `caps` (bits of the
/// first 32).
fn set_caps(caps: u32) -> std::io::Result<()> {
    let mut h = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let d = [
        CapData {
            effective: caps,
            permitted: caps,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: capset with a version-3 header and its two data words.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Becomes `a` for good: supplementary groups dropped, then the group, then the user (which
/// clears every capability but the `keep` bits, e.g. `1 << CAP_DAC_OVERRIDE`). Every thread
/// of the process changes with it. Call it before other threads start when `keep` is not 0
/// (capabilities are per thread).
pub fn become_user(a: &Account, keep: u32) -> anyhow::Result<()> {
    if a.uid == 0 {
        return Ok(());
    }
    // SAFETY: plain syscalls with values from the user database; checked below.
    unsafe {
        if keep != 0 {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot drop supplementary groups");
        }
        if libc::setgid(a.gid) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot become group {}", a.gid));
        }
        if libc::setuid(a.uid) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot become user {}", a.name));
        }
        // Never regain anything through exec of a set-uid or file-capability binary.
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if libc::setuid(0) == 0 || libc::geteuid() != a.uid {
            bail!("dropping root to {} did not hold", a.name);
        }
    }
    if keep != 0 {
        set_caps(keep).context("cannot keep the one capability rotation needs")?;
    }
    Ok(())
}

/// Sets the calling thread's niceness (Linux keeps it per thread). Lowering it needs
/// CAP_SYS_NICE: without, a warning says what that costs and the capture goes on.
pub fn set_thread_nice(nice: i32) -> anyhow::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: getpriority/setpriority on this thread's own id.
    let now = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t)
    };
    if now == nice {
        return Ok(());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => eprintln!(
                "rf-tap: warning: cannot set the ring reader's niceness to {nice} (needs \
                 CAP_SYS_NICE): when other processes keep every core busy, packets may be \
                 dropped (counted as ring_full)"
            ),
            _ => bail!("cannot set the ring reader's niceness to {nice}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_looked_up_and_directories_checked() {
        let root = account("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(account("no-such-user-rf-tap").is_err());
        if let Ok(nobody) = account("nobody") {
            assert_ne!(nobody.uid, 0);
            assert!(
                can_create_in(&nobody, Path::new("/tmp")),
                "sticky, world-writable"
            );
            assert!(!can_create_in(&nobody, Path::new("/etc")));
        }
    }
}
