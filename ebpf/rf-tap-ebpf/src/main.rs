//! rf-tap kernel programs.
//!
//! Each hook (TC ingress, TC egress, XDP) is one small function that hands its context to
//! the shared pipeline in `pipeline.rs`: parse headers, evaluate the numbered filter rules,
//! sample by flow, truncate, copy into the ring buffer, and count every outcome. The
//! programs never modify, drop or delay a packet: every path returns "pass".
#![no_std]
#![no_main]

mod maps;
mod mirror;
mod packet;
mod pipeline;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
