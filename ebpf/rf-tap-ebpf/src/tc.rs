//! TC clsact hooks, attached through TCX links. They always return TC_ACT_UNSPEC
//! ("continue with the next program, then the normal path"), so the production path is never
//! changed.
use aya_ebpf::{macros::classifier, programs::TcContext};
use rf_tap_common::{VlanMeta, DIR_EGRESS, DIR_INGRESS};

use crate::{mirror, pipeline};

const TC_ACT_UNSPEC: i32 = -1;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    let (ifindex, vlan) = meta(&ctx);
    pipeline::capture(&ctx, DIR_INGRESS, ifindex, vlan);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let (ifindex, vlan) = meta(&ctx);
    pipeline::capture(&ctx, DIR_EGRESS, ifindex, vlan);
    TC_ACT_UNSPEC
}

/// The interface and any VLAN tag the kernel holds outside the frame (VLAN offload strips the
/// outer tag before TC ingress, and VLAN devices hand it to egress as metadata).
#[inline(always)]
fn meta(ctx: &TcContext) -> (u32, VlanMeta) {
    // SAFETY: reading fields of the program's own __sk_buff context.
    let skb = unsafe { &*ctx.skb.skb };
    let vlan = VlanMeta {
        present: skb.vlan_present != 0,
        tci: skb.vlan_tci as u16,
        // __sk_buff.vlan_proto holds the be16 value.
        proto: u16::from_be(skb.vlan_proto as u16),
    };
    (skb.ifindex, vlan)
}

#[classifier]
pub fn tc_mirror_ingress(ctx: TcContext) -> i32 {
    mirror::mirror(&ctx, DIR_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_mirror_egress(ctx: TcContext) -> i32 {
    mirror::mirror(&ctx, DIR_EGRESS);
    TC_ACT_UNSPEC
}

/// Egress of rf-tap's VXLAN device (the only program that may change or drop a packet, and
/// it only ever sees rf-tap's own copies).
#[classifier]
pub fn tc_mirror_encap(ctx: TcContext) -> i32 {
    mirror::encap(&ctx)
}
