//! The static Huffman code of HPACK (RFC 7541 Appendix B): `(bits, code)` per symbol 0..=255
//! and EOS (256), the code right-aligned. Decoding walks a binary tree built once from it.

use std::sync::OnceLock;

#[rustfmt::skip]
pub(super) const CODES: [(u8, u32); 257] = [
    (13, 0x1ff8), (23, 0x7fffd8), (28, 0xfffffe2), (28, 0xfffffe3), (28, 0xfffffe4), (28, 0xfffffe5),
    (28, 0xfffffe6), (28, 0xfffffe7), (28, 0xfffffe8), (24, 0xffffea), (30, 0x3ffffffc), (28, 0xfffffe9),
    (28, 0xfffffea), (30, 0x3ffffffd), (28, 0xfffffeb), (28, 0xfffffec), (28, 0xfffffed), (28, 0xfffffee),
    (28, 0xfffffef), (28, 0xffffff0), (28, 0xffffff1), (28, 0xffffff2), (30, 0x3ffffffe), (28, 0xffffff3),
    (28, 0xffffff4), (28, 0xffffff5), (28, 0xffffff6), (28, 0xffffff7), (28, 0xffffff8), (28, 0xffffff9),
    (28, 0xffffffa), (28, 0xffffffb), (6, 0x14), (10, 0x3f8), (10, 0x3f9), (12, 0xffa),
    (13, 0x1ff9), (6, 0x15), (8, 0xf8), (11, 0x7fa), (10, 0x3fa), (10, 0x3fb),
    (8, 0xf9), (11, 0x7fb), (8, 0xfa), (6, 0x16), (6, 0x17), (6, 0x18),
    (5, 0x0), (5, 0x1), (5, 0x2), (6, 0x19), (6, 0x1a), (6, 0x1b),
    (6, 0x1c), (6, 0x1d), (6, 0x1e), (6, 0x1f), (7, 0x5c), (8, 0xfb),
    (15, 0x7ffc), (6, 0x20), (12, 0xffb), (10, 0x3fc), (13, 0x1ffa), (6, 0x21),
    (7, 0x5d), (7, 0x5e), (7, 0x5f), (7, 0x60), (7, 0x61), (7, 0x62),
    (7, 0x63), (7, 0x64), (7, 0x65), (7, 0x66), (7, 0x67), (7, 0x68),
    (7, 0x69), (7, 0x6a), (7, 0x6b), (7, 0x6c), (7, 0x6d), (7, 0x6e),
    (7, 0x6f), (7, 0x70), (7, 0x71), (7, 0x72), (8, 0xfc), (7, 0x73),
    (8, 0xfd), (13, 0x1ffb), (19, 0x7fff0), (13, 0x1ffc), (14, 0x3ffc), (6, 0x22),
    (15, 0x7ffd), (5, 0x3), (6, 0x23), (5, 0x4), (6, 0x24), (5, 0x5),
    (6, 0x25), (6, 0x26), (6, 0x27), (5, 0x6), (7, 0x74), (7, 0x75),
    (6, 0x28), (6, 0x29), (6, 0x2a), (5, 0x7), (6, 0x2b), (7, 0x76),
    (6, 0x2c), (5, 0x8), (5, 0x9), (6, 0x2d), (7, 0x77), (7, 0x78),
    (7, 0x79), (7, 0x7a), (7, 0x7b), (15, 0x7ffe), (11, 0x7fc), (14, 0x3ffd),
    (13, 0x1ffd), (28, 0xffffffc), (20, 0xfffe6), (22, 0x3fffd2), (20, 0xfffe7), (20, 0xfffe8),
    (22, 0x3fffd3), (22, 0x3fffd4), (22, 0x3fffd5), (23, 0x7fffd9), (22, 0x3fffd6), (23, 0x7fffda),
    (23, 0x7fffdb), (23, 0x7fffdc), (23, 0x7fffdd), (23, 0x7fffde), (24, 0xffffeb), (23, 0x7fffdf),
    (24, 0xffffec), (24, 0xffffed), (22, 0x3fffd7), (23, 0x7fffe0), (24, 0xffffee), (23, 0x7fffe1),
    (23, 0x7fffe2), (23, 0x7fffe3), (23, 0x7fffe4), (21, 0x1fffdc), (22, 0x3fffd8), (23, 0x7fffe5),
    (22, 0x3fffd9), (23, 0x7fffe6), (23, 0x7fffe7), (24, 0xffffef), (22, 0x3fffda), (21, 0x1fffdd),
    (20, 0xfffe9), (22, 0x3fffdb), (22, 0x3fffdc), (23, 0x7fffe8), (23, 0x7fffe9), (21, 0x1fffde),
    (23, 0x7fffea), (22, 0x3fffdd), (22, 0x3fffde), (24, 0xfffff0), (21, 0x1fffdf), (22, 0x3fffdf),
    (23, 0x7fffeb), (23, 0x7fffec), (21, 0x1fffe0), (21, 0x1fffe1), (22, 0x3fffe0), (21, 0x1fffe2),
    (23, 0x7fffed), (22, 0x3fffe1), (23, 0x7fffee), (23, 0x7fffef), (20, 0xfffea), (22, 0x3fffe2),
    (22, 0x3fffe3), (22, 0x3fffe4), (23, 0x7ffff0), (22, 0x3fffe5), (22, 0x3fffe6), (23, 0x7ffff1),
    (26, 0x3ffffe0), (26, 0x3ffffe1), (20, 0xfffeb), (19, 0x7fff1), (22, 0x3fffe7), (23, 0x7ffff2),
    (22, 0x3fffe8), (25, 0x1ffffec), (26, 0x3ffffe2), (26, 0x3ffffe3), (26, 0x3ffffe4), (27, 0x7ffffde),
    (27, 0x7ffffdf), (26, 0x3ffffe5), (24, 0xfffff1), (25, 0x1ffffed), (19, 0x7fff2), (21, 0x1fffe3),
    (26, 0x3ffffe6), (27, 0x7ffffe0), (27, 0x7ffffe1), (26, 0x3ffffe7), (27, 0x7ffffe2), (24, 0xfffff2),
    (21, 0x1fffe4), (21, 0x1fffe5), (26, 0x3ffffe8), (26, 0x3ffffe9), (28, 0xffffffd), (27, 0x7ffffe3),
    (27, 0x7ffffe4), (27, 0x7ffffe5), (20, 0xfffec), (24, 0xfffff3), (20, 0xfffed), (21, 0x1fffe6),
    (22, 0x3fffe9), (21, 0x1fffe7), (21, 0x1fffe8), (23, 0x7ffff3), (22, 0x3fffea), (22, 0x3fffeb),
    (25, 0x1ffffee), (25, 0x1ffffef), (24, 0xfffff4), (24, 0xfffff5), (26, 0x3ffffea), (23, 0x7ffff4),
    (26, 0x3ffffeb), (27, 0x7ffffe6), (26, 0x3ffffec), (26, 0x3ffffed), (27, 0x7ffffe7), (27, 0x7ffffe8),
    (27, 0x7ffffe9), (27, 0x7ffffea), (27, 0x7ffffeb), (28, 0xffffffe), (27, 0x7ffffec), (27, 0x7ffffed),
    (27, 0x7ffffee), (27, 0x7ffffef), (27, 0x7fffff0), (26, 0x3ffffee), (30, 0x3fffffff),
];

/// Tree nodes: `[child for bit 0, child for bit 1]`; a child above `LEAF` is symbol
/// `child - LEAF`; 0 is "none" (the root is never a child).
const LEAF: u16 = 1024;

fn tree() -> &'static Vec<[u16; 2]> {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes: Vec<[u16; 2]> = vec![[0, 0]];
        for (sym, &(bits, code)) in CODES.iter().enumerate() {
            let mut at = 0usize;
            for i in (0..bits).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    nodes[at][bit] = LEAF + sym as u16;
                } else {
                    if nodes[at][bit] == 0 {
                        nodes.push([0, 0]);
                        nodes[at][bit] = (nodes.len() - 1) as u16;
                    }
                    at = nodes[at][bit] as usize;
                }
            }
        }
        nodes
    })
}

/// Why a Huffman string did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("a Huffman string holds the EOS symbol")]
    Eos,
    #[error("a Huffman string ends in padding that is not the EOS prefix (or longer than 7 bits)")]
    BadPadding,
    #[error("a Huffman string decodes to more than the limit")]
    TooLong,
}

/// One step of the 4-bits-at-a-time decoder: from a tree node, a nibble leads to `next`,
/// perhaps emitting one symbol (no code is shorter than 5 bits, so a nibble ends at most
/// one), or fails on EOS.
#[derive(Clone, Copy, Default)]
struct Step {
    next: u16,
    sym: u8,
    emits: bool,
    eos: bool,
}

/// The nibble table (`[node][nibble]`) and, per node, whether input may end there: the
/// bits since the last symbol are at most 7 and all ones (the EOS prefix, RFC 7541 5.2).
struct Table {
    steps: Vec<[Step; 16]>,
    accepts: Vec<bool>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let t = tree();
        let mut accepts = vec![false; t.len()];
        // Walk the all-ones path from the root: depth 0..=7 accept.
        let mut at = 0usize;
        accepts[0] = true;
        for _ in 0..7 {
            let next = t[at][1];
            if next >= LEAF {
                break;
            }
            at = next as usize;
            accepts[at] = true;
        }
        let steps = (0..t.len())
            .map(|node| {
                let mut row = [Step::default(); 16];
                for (nib, step) in row.iter_mut().enumerate() {
                    let mut at = node;
                    for i in (0..4).rev() {
                        let next = t[at][(nib >> i) & 1];
                        if next >= LEAF {
                            let sym = next - LEAF;
                            if sym == 256 {
                                step.eos = true;
                                break;
                            }
                            step.sym = sym as u8;
                            step.emits = true;
                            at = 0;
                        } else {
                            at = next as usize;
                        }
                    }
                    step.next = at as u16;
                }
                row
            })
            .collect();
        Table { steps, accepts }
    })
}

/// Decodes `input`, at most `cap` octets of output (four bits per table step).
pub fn decode(input: &[u8], cap: usize, out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let t = table();
    let mut at = 0usize;
    for &byte in input {
        for nib in [byte >> 4, byte & 0xf] {
            let step = t.steps[at][usize::from(nib)];
            if step.eos {
                return Err(HuffmanError::Eos);
            }
            if step.emits {
                if out.len() >= cap {
                    return Err(HuffmanError::TooLong);
                }
                out.push(step.sym);
            }
            at = usize::from(step.next);
        }
    }
    if !t.accepts[at] {
        return Err(HuffmanError::BadPadding);
    }
    Ok(())
}

/// The bit-at-a-time reference the table is checked against.
#[cfg(test)]
fn decode_bits(input: &[u8], cap: usize, out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let t = tree();
    let mut at = 0usize;
    let (mut pending, mut all_ones) = (0u32, true);
    for &byte in input {
        for i in (0..8).rev() {
            let bit = ((byte >> i) & 1) as usize;
            pending += 1;
            all_ones &= bit == 1;
            let next = t[at][bit];
            if next >= LEAF {
                let sym = next - LEAF;
                if sym == 256 {
                    return Err(HuffmanError::Eos);
                }
                if out.len() >= cap {
                    return Err(HuffmanError::TooLong);
                }
                out.push(sym as u8);
                at = 0;
                pending = 0;
                all_ones = true;
            } else {
                at = next as usize;
            }
        }
    }
    if pending > 7 || !all_ones {
        return Err(HuffmanError::BadPadding);
    }
    Ok(())
}

/// Encodes `s` (for tests and the reference model), padded with ones.
pub fn encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut n) = (0u64, 0u32);
    for &c in s {
        let (bits, code) = CODES[c as usize];
        acc = (acc << bits) | u64::from(code);
        n += u32::from(bits);
        while n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
        acc &= (1u64 << n) - 1;
    }
    if n > 0 {
        out.push(((acc << (8 - n)) | ((1 << (8 - n)) - 1)) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The nibble table decodes any bytes as the bit-by-bit tree walk does, errors
        /// included; and what was encoded comes back.
        #[test]
        fn the_table_agrees_with_the_tree(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            cap in 0usize..80,
        ) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let ra = decode(&input, cap, &mut a);
            let rb = decode_bits(&input, cap, &mut b);
            proptest::prop_assert_eq!(ra, rb);
            if ra.is_ok() {
                proptest::prop_assert_eq!(a, b);
            }
            let mut back = Vec::new();
            proptest::prop_assert!(decode(&encode(&input), usize::MAX, &mut back).is_ok());
            proptest::prop_assert_eq!(back, input);
        }
    }
}
