//! Reading packet bytes the same way from TC and XDP, so that header parsing is written once.
//!
//! Headers are read in place when they lie in the packet's linear head (direct packet
//! access: no helper call), and otherwise through `bpf_skb_load_bytes` / `bpf_xdp_load_bytes`,
//! which also reach the fragments of non-linear (GSO, multi-buffer) packets.
use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use core::mem::MaybeUninit;

pub trait PacketBytes {
    /// Whole packet length in bytes.
    fn len(&self) -> u32;
    /// Copies `len` bytes at `offset` to `dst`; returns false when they are not there.
    fn read(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
    /// Start and end addresses of the linear head, the bytes the program may read in place.
    fn head(&self) -> (usize, usize);

    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        let (start, end) = self.head();
        let at = start + offset as usize;
        if at + core::mem::size_of::<T>() <= end {
            // SAFETY: [at, at + size_of::<T>()) lies inside the linear head (checked above,
            // the check the verifier wants), and T is plain data read without alignment.
            return Some(unsafe { (at as *const T).read_unaligned() });
        }
        let mut v = MaybeUninit::<T>::uninit();
        if self.read(
            offset,
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
        ) {
            // SAFETY: the helper filled all size_of::<T>() bytes, and T is plain data.
            Some(unsafe { v.assume_init() })
        } else {
            None
        }
    }
    #[inline(always)]
    fn u8_at(&self, offset: u32) -> Option<u8> {
        // Through the helper: for one byte the compiler turns the bounds check into a form
        // (`at < end`) from which the verifier derives no readable range.
        let mut v = 0u8;
        self.read(offset, &mut v, 1).then_some(v)
    }
    #[inline(always)]
    fn be16_at(&self, offset: u32) -> Option<u16> {
        self.load::<[u8; 2]>(offset).map(u16::from_be_bytes)
    }
}

impl PacketBytes for TcContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn read(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: dst points to at least len writable bytes (a stack value or a ring slot).
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset, dst.cast(), len) == 0 }
    }
    #[inline(always)]
    fn head(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }
}

impl PacketBytes for XdpContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: ctx is the program's own context pointer.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as u32 }
    }
    #[inline(always)]
    fn read(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as above.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, dst.cast(), len) == 0 }
    }
    #[inline(always)]
    fn head(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }
}
