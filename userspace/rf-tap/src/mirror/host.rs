//! Host facts a mirror session depends on: where pins live (bpffs), which network namespace
//! this is, the route and MTU towards a target, and the addresses of this host.

use std::{
    ffi::CString,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use anyhow::{bail, Context as _};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &str) -> bool {
    let Ok(c) = CString::new(path) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// The inode of this process's network namespace: sessions are per namespace.
pub fn netns_id() -> anyhow::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")
        .context("cannot read /proc/self/ns/net")?
        .ino())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Makes `/sys/fs/bpf` a BPF filesystem that outlives this process.
///
/// `ip netns exec` runs a command in a private mount namespace with a fresh `/sys`, where a
/// bpffs mounted (and objects pinned) would vanish with the command. So when this process's
/// mount namespace has no bpffs and differs from its nearest ancestor's (or PID 1's), it
/// joins that one first; the network namespace stays the same. Must run before any thread
/// is started, and after everything that reads `/sys/class/net` (which would then show
/// another namespace's interfaces).
pub fn enter_bpffs() -> anyhow::Result<()> {
    if is_bpffs(BPFFS) {
        return Ok(());
    }
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut candidates = vec![1u32];
    let mut pid = std::process::id();
    for _ in 0..32 {
        match parent_of(pid) {
            Some(p) if p > 1 => {
                candidates.insert(candidates.len() - 1, p);
                pid = p;
            }
            _ => break,
        }
    }
    let target = candidates.into_iter().find_map(|pid| {
        let path = format!("/proc/{pid}/ns/mnt");
        let ns = std::fs::read_link(&path).ok()?;
        (Some(&ns) != own.as_ref()).then_some(path)
    });
    if let Some(path) = target {
        let cwd = std::fs::File::open(".").ok();
        let ns = std::fs::File::open(&path)
            .with_context(|| format!("cannot open the mount namespace {path}"))?;
        // SAFETY: plain syscalls on descriptors we own; rf-tap is single-threaded here.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            return Err(io::Error::last_os_error())
                .context("cannot join the host mount namespace to pin the session");
        }
        if let Some(cwd) = cwd {
            // SAFETY: as above. Relative paths keep meaning what they meant.
            unsafe { libc::fchdir(cwd.as_raw_fd()) };
        }
        if is_bpffs(BPFFS) {
            return Ok(());
        }
    }
    let (src, dst, ty) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            ty.as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context(
            "/sys/fs/bpf is not a BPF filesystem and mounting one there failed \
             (mount -t bpf bpf /sys/fs/bpf)",
        );
    }
    Ok(())
}

/// What the kernel would do with a packet to the target.
#[derive(Debug)]
pub struct PathFacts {
    /// Largest IP packet on the route.
    pub mtu: u32,
}

/// Checks there is a route to `target` and finds its MTU, the way the VXLAN device will
/// route the copies (a connected UDP socket does the same route lookup).
pub fn route_to(target: IpAddr, port: u16) -> anyhow::Result<PathFacts> {
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => "0.0.0.0:0".parse()?,
        IpAddr::V6(_) => "[::]:0".parse()?,
    };
    let sock = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
    if let Err(e) = sock.connect(SocketAddr::new(target, port)) {
        match e.raw_os_error() {
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => {
                bail!("no route to the target {target}: add one (ip route) or pick a reachable target")
            }
            _ => return Err(e).with_context(|| format!("cannot route to the target {target}")),
        }
    }
    // Resolve the next hop now (one empty datagram, which VXLAN receivers discard), so the
    // first copies do not wait in, or overflow, the neighbour queue; an ICMP error that comes
    // back at once says the target is unreachable.
    let _ = sock.send(&[]);
    let _ = sock.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    let mut buf = [0u8; 1];
    if let Err(e) = sock.recv(&mut buf) {
        match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => {
                bail!("the target {target} is unreachable ({e})")
            }
            _ => {}
        }
    }
    let (level, opt) = match target {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: mtu/len are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || mtu <= 0 {
        return Err(io::Error::last_os_error()).context("cannot read the path MTU to the target");
    }
    Ok(PathFacts { mtu: mtu as u32 })
}

/// The addresses configured on this host's interfaces (this network namespace).
pub fn local_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: the address family says which sockaddr this is.
        let addr = unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sa.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if let Some(a) = addr {
            out.push((name, a));
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Runs `ip` with arguments, returning its error output on failure.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The interfaces of this network namespace with their transmit drops and errors, from
/// /proc/net/dev (which, unlike /sys, always shows this process's network namespace).
pub fn net_devices() -> Vec<(String, u64)> {
    let text = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (dev, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets
            // errs drop
            Some((dev.trim().to_string(), v.get(10)? + v.get(11)?))
        })
        .collect()
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}
