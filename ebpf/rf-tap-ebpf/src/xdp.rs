//! XDP hook (ingress only). Multi-buffer aware (`frags`), always XDP_PASS.
use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use rf_tap_common::{VlanMeta, DIR_INGRESS};

use crate::pipeline;

#[xdp(frags)]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    pipeline::capture(&ctx, DIR_INGRESS, ifindex, VlanMeta::default());
    XDP_PASS
}
