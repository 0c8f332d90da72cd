//! XDP hooks (ingress only).
//!
//! - `xdp_ingress` copies into the ring buffer like the TC hooks; multi-buffer aware
//!   (`frags`), always XDP_PASS.
//! - `xdp_sink` serves a dedicated sink interface: packets the rules accept are redirected to
//!   the AF_XDP socket of their receive queue (taken away from the kernel stack, with the
//!   receive time in the XDP metadata); everything else passes to the stack as usual.
use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_adjust_meta},
    macros::{map, xdp},
    maps::XskMap,
    programs::XdpContext,
};
use rf_tap_common::{counter, VlanMeta, XskMeta, DIR_INGRESS, XSK_META_LEN, XSK_META_MAGIC};

use crate::{maps::count, packet::PacketBytes, pipeline};

#[xdp(frags)]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    pipeline::capture(&ctx, DIR_INGRESS, ifindex, VlanMeta::default());
    XDP_PASS
}

/// One AF_XDP socket per receive queue (entries set at load to the queue count).
#[map(name = "XSKS")]
pub static XSKS: XskMap = XskMap::with_max_entries(1, 0);

#[xdp]
pub fn xdp_sink(ctx: XdpContext) -> u32 {
    if pipeline::judge(&ctx, DIR_INGRESS).is_none() {
        return XDP_PASS;
    }
    let len = ctx.len();
    stamp(&ctx);
    match XSKS.redirect(ctx.rx_queue_index(), u64::from(XDP_PASS)) {
        Ok(action) => {
            count(counter::COPIED, 1);
            count(counter::COPIED_BYTES, u64::from(len));
            action
        }
        Err(action) => {
            count(counter::COPY_FAILED, 1);
            action
        }
    }
}

/// Puts the receive time in front of the frame; frames without room for it go without.
#[inline(always)]
fn stamp(ctx: &XdpContext) {
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(XSK_META_LEN as i32)) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + XSK_META_LEN > ctx.data() {
        return;
    }
    let m = meta as *mut XskMeta;
    // SAFETY: the verifier-checked range [meta, meta + XSK_META_LEN) lies before `data`.
    unsafe {
        (*m).ts_ns = bpf_ktime_get_ns();
        (*m).magic = XSK_META_MAGIC;
        (*m)._pad = 0;
    }
}
