//! TC clsact hooks, attached through TCX links. They always return TC_ACT_UNSPEC
//! ("continue with the next program, then the normal path"), so the production path is never
//! changed.
use aya_ebpf::{macros::classifier, programs::TcContext};
use rf_tap_common::{DIR_EGRESS, DIR_INGRESS};

use crate::pipeline;

const TC_ACT_UNSPEC: i32 = -1;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    pipeline::capture(&ctx, DIR_INGRESS, ifindex);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    pipeline::capture(&ctx, DIR_EGRESS, ifindex);
    TC_ACT_UNSPEC
}
