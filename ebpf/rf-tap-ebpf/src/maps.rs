//! The maps userspace configures and reads. Sizes marked "set at load" are placeholders that
//! userspace overrides (`EbpfLoader::set_max_entries`).
use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use rf_tap_common::{
    CaptureConfig, FilterRule, MirrorSession, SessionOrder, MAX_RULES, MAX_SESSIONS,
};

/// Filter rules in evaluation order; `CONFIG.rule_count` of them are live.
#[map(name = "RULES")]
pub static RULES: Array<FilterRule> = Array::with_max_entries(MAX_RULES, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<CaptureConfig> = Array::with_max_entries(1, 0);

/// Exact per-CPU counters, slots in `rf_tap_common::counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(rf_tap_common::counter::SLOTS, 0);

/// Copied packets for userspace (size set at load).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[inline(always)]
pub fn count(slot: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU, which do not nest
        // (TC and XDP run with bottom halves disabled).
        unsafe { *p += n }
    }
}

// Mirror sessions. Userspace pins these (one set per network namespace) so that sessions
// outlive the command that made them; see `mirror.rs`.

#[map(name = "MIRROR_SLOTS")]
pub static MIRROR_SLOTS: Array<MirrorSession> = Array::with_max_entries(MAX_SESSIONS, 0);

/// `MAX_RULES` rules per slot: slot `s` uses entries `s * MAX_RULES ..`.
#[map(name = "MIRROR_RULES")]
pub static MIRROR_RULES: Array<FilterRule> = Array::with_max_entries(MAX_SESSIONS * MAX_RULES, 0);

#[map(name = "MIRROR_ORDER")]
pub static MIRROR_ORDER: Array<SessionOrder> = Array::with_max_entries(2, 0);

#[map(name = "MIRROR_ACTIVE")]
pub static MIRROR_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "MIRROR_COUNTERS")]
pub static MIRROR_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(rf_tap_common::mirror_counter::SLOTS, 0);

#[inline(always)]
pub fn mirror_count(slot: u32, n: u64) {
    if let Some(p) = MIRROR_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; a nested run on this CPU (a copy leaving through a mirrored
        // interface) happens inside a helper call, never between this load and store.
        unsafe { *p += n }
    }
}
