//! What replay needs to know about the interface it sends on, read from sysfs.

use anyhow::{bail, Context as _};

pub struct InterfaceState {
    pub ifindex: u32,
    pub mtu: u32,
    /// `operstate` (up, down, lowerlayerdown, unknown, ...).
    pub operstate: String,
}

fn read(iface: &str, what: &str) -> std::io::Result<String> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}")).map(|s| s.trim().into())
}

/// Checks that `iface` exists and is administratively up.
pub fn inspect(iface: &str) -> anyhow::Result<InterfaceState> {
    if iface.is_empty() || iface.contains('/') || iface.len() > 15 {
        bail!("`{iface}` is not an interface name");
    }
    let ifindex: u32 = match read(iface, "ifindex") {
        Ok(s) => s.parse().context("bad ifindex in sysfs")?,
        Err(_) => bail!("no such interface: {iface} (see `ip link`)"),
    };
    let flags = read(iface, "flags")?;
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(0);
    if flags & libc::IFF_UP as u32 == 0 {
        bail!("interface {iface} is down (bring it up with `ip link set {iface} up`)");
    }
    let mtu = read(iface, "mtu")?.parse().context("bad mtu in sysfs")?;
    let operstate = read(iface, "operstate").unwrap_or_else(|_| "unknown".into());
    Ok(InterfaceState {
        ifindex,
        mtu,
        operstate,
    })
}
