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

/// The network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+): unlike its inode, never
/// reused by a later namespace.
pub fn netns_cookie() -> Option<u64> {
    let sock = UdpSocket::bind("0.0.0.0:0")
        .or_else(|_| UdpSocket::bind("[::]:0"))
        .ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie/len are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
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
    /// The source address the route picks.
    pub local: IpAddr,
    /// Where an IPv4 copy can be sent without a route lookup per copy, if it can.
    pub direct: Option<DirectPath>,
}

/// The Ethernet interface and next hop of the route to an IPv4 target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectPath {
    pub ifindex: u32,
    pub nexthop: std::net::Ipv4Addr,
}

/// The route to an IPv4 target as `ip -j route get` reports it, when it leaves by an
/// Ethernet interface (directly or through a gateway); None for anything else (local,
/// blackhole, multipath, a tunnel or raw-IP interface), which the VXLAN device then routes.
pub fn direct_path(target: std::net::Ipv4Addr) -> Option<DirectPath> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-4", "route", "get", &target.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_route_get(&out.stdout, target, ethernet_ifindex)
}

/// The index of an Ethernet interface (bpf_redirect_neigh writes an Ethernet header), asked
/// of the kernel rather than /sys, which may show another network namespace once the bpffs
/// is joined.
fn ethernet_ifindex(dev: &str) -> Option<u32> {
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if dev.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq passed.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR set the hardware-address member of the union.
    if unsafe { req.ifr_ifru.ifru_hwaddr.sa_family } != libc::ARPHRD_ETHER {
        return None;
    }
    // SAFETY: ifr_name is NUL-terminated (checked length above, zeroed struct).
    let ifindex = unsafe { libc::if_nametoindex(req.ifr_name.as_ptr()) };
    (ifindex != 0).then_some(ifindex)
}

fn parse_route_get(
    json: &[u8],
    target: std::net::Ipv4Addr,
    ifindex_of: impl Fn(&str) -> Option<u32>,
) -> Option<DirectPath> {
    let routes: Vec<serde_json::Value> = serde_json::from_slice(json).ok()?;
    let [route] = routes.as_slice() else {
        return None;
    };
    if route
        .get("type")
        .and_then(|t| t.as_str())
        .is_some_and(|t| t != "unicast")
    {
        return None;
    }
    let ifindex = ifindex_of(route.get("dev")?.as_str()?)?;
    let nexthop = match route.get("gateway") {
        Some(g) => g.as_str()?.parse().ok()?,
        None => target,
    };
    Some(DirectPath { ifindex, nexthop })
}

/// The kernel's ephemeral port range, which the VXLAN device spreads source ports over.
pub fn source_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(lo, hi)| lo <= hi)
        .unwrap_or((32768, 60999))
}

/// Longest wait for the next hop to answer ARP or neighbour discovery (the kernel gives up
/// on an on-link address after about 3 s).
const NEIGHBOUR_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The neighbour-table state of `addr` on `dev` (`REACHABLE`, `INCOMPLETE`, `FAILED`, ...),
/// None when there is no entry.
fn neighbour_state(addr: IpAddr, dev: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "neigh", "show", &addr.to_string(), "dev", dev])
        .output()
        .ok()?;
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    let states = v.first()?.get("state")?.as_array()?.clone();
    states.first()?.as_str().map(str::to_string)
}

/// The next hop towards `target` and the device it is on, when that device resolves
/// neighbours (not loopback, a tunnel, or a local or broadcast route).
fn next_hop(target: IpAddr) -> Option<(IpAddr, String)> {
    let family = if target.is_ipv4() { "-4" } else { "-6" };
    let out = std::process::Command::new("ip")
        .args(["-j", family, "route", "get", &target.to_string()])
        .output()
        .ok()?;
    let routes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    let route = routes.first()?;
    let dev = route.get("dev")?.as_str()?.to_string();
    if route
        .get("type")
        .and_then(|t| t.as_str())
        .is_some_and(|t| t != "unicast")
    {
        return None;
    }
    let link = std::process::Command::new("ip")
        .args(["-j", "link", "show", "dev", &dev])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).ok())
        .unwrap_or_default();
    let no_neighbours = link
        .first()
        .and_then(|l| l.get("flags"))
        .and_then(|f| f.as_array())
        .is_some_and(|f| {
            f.iter()
                .any(|x| matches!(x.as_str(), Some("NOARP" | "LOOPBACK" | "POINTOPOINT")))
        });
    if no_neighbours {
        return None;
    }
    let hop = route
        .get("gateway")
        .and_then(|g| g.as_str())
        .and_then(|g| g.parse().ok())
        .unwrap_or(target);
    Some((hop, dev))
}

/// The next hop towards `target` stopped answering ARP or neighbour discovery (its entry is
/// `FAILED`): what `session list` warns about.
pub fn next_hop_failed(target: IpAddr) -> Option<IpAddr> {
    let (hop, dev) = next_hop(target)?;
    (neighbour_state(hop, &dev).as_deref() == Some("FAILED")).then_some(hop)
}

/// Waits (bounded) until the next hop towards `target` answers ARP or neighbour discovery,
/// so that a target that never will is refused instead of silently getting nothing. A device
/// without neighbours (loopback, a tunnel) has nothing to wait for.
fn wait_for_neighbour(target: IpAddr) -> anyhow::Result<()> {
    let Some((hop, dev)) = next_hop(target) else {
        return Ok(());
    };
    let dev = dev.as_str();
    let deadline = std::time::Instant::now() + NEIGHBOUR_WAIT;
    loop {
        match neighbour_state(hop, dev).as_deref() {
            Some("REACHABLE" | "STALE" | "DELAY" | "PROBE" | "PERMANENT" | "NOARP") => {
                return Ok(())
            }
            Some("FAILED") => break,
            _ if std::time::Instant::now() >= deadline => break,
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    let what = if hop == target {
        format!("the target {target}")
    } else {
        format!("the gateway {hop} towards the target {target}")
    };
    bail!(
        "{what} does not answer {} on {dev}: check the address, or that it is up",
        if hop.is_ipv4() {
            "ARP"
        } else {
            "neighbour discovery"
        }
    )
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
    wait_for_neighbour(target)?;
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
    let local = sock
        .local_addr()
        .context("cannot read the source address towards the target")?
        .ip();
    let direct = match target {
        IpAddr::V4(t) => direct_path(t),
        IpAddr::V6(_) => None,
    };
    Ok(PathFacts {
        mtu: mtu as u32,
        local,
        direct,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_get_gives_device_and_next_hop() {
        let t: std::net::Ipv4Addr = "10.9.0.2".parse().unwrap();
        let eth = |d: &str| (d == "eth0").then_some(7);
        let on_link = br#"[{"dst":"10.9.0.2","dev":"eth0","prefsrc":"10.9.0.1","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(
            parse_route_get(on_link, t, eth),
            Some(DirectPath {
                ifindex: 7,
                nexthop: t
            })
        );
        let via =
            br#"[{"dst":"10.9.0.2","gateway":"192.0.2.1","dev":"eth0","prefsrc":"192.0.2.2"}]"#;
        assert_eq!(
            parse_route_get(via, t, eth),
            Some(DirectPath {
                ifindex: 7,
                nexthop: "192.0.2.1".parse().unwrap()
            })
        );
        // Not an Ethernet device, a local route, garbage: the VXLAN device routes.
        let tun = br#"[{"dst":"10.9.0.2","dev":"wg0"}]"#;
        assert_eq!(parse_route_get(tun, t, eth), None);
        let local = br#"[{"type":"local","dst":"10.9.0.2","dev":"eth0"}]"#;
        assert_eq!(parse_route_get(local, t, eth), None);
        assert_eq!(parse_route_get(b"[", t, eth), None);
        assert_eq!(parse_route_get(b"[]", t, eth), None);
    }
}
