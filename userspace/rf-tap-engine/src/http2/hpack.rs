//! HPACK (RFC 7541) decoding for one direction of an HTTP/2 connection, passive: the
//! decoder follows the encoder's dynamic table from the header blocks it sees.
//!
//! A capture may begin after the connection did, or lose a header block to a gap: entries
//! the decoder never saw inserted are then referred to. Such a reference is not invented:
//! the field is reported as unknown, with what the block itself carried (a literal value
//! under an unknown name), and the table is marked `lost` from then on, since its sizes and
//! evictions can no longer be followed. A size update to 0 empties the table, after which it
//! is whole again (the only way the protocol allows the state to be regained).

use std::collections::VecDeque;

use super::huffman;

/// RFC 7541 Appendix A.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block could not be read (it is then dropped whole; the table is lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field (offset {0})")]
    Truncated(usize),
    #[error("integer too large at offset {0}")]
    IntegerOverflow(usize),
    #[error("index 0 at offset {0}")]
    ZeroIndex(usize),
    #[error("string literal at offset {0}: {1}")]
    Huffman(usize, huffman::HuffmanError),
    #[error("string literal longer than the limit at offset {0}")]
    StringTooLong(usize),
    #[error("dynamic table size update to {0}, above the limit {1}")]
    SizeAboveLimit(usize, usize),
    #[error("more fields than the limit")]
    TooManyFields,
}

/// One decoded field; `name` or `value` is None where the block referred to a table entry
/// the decoder never saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Never-indexed literal (RFC 7541 6.2.3): a value the encoder marked sensitive.
    pub sensitive: bool,
}

/// A decoded header block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Block {
    pub fields: Vec<Field>,
    /// References to entries never seen (`hpack_unknown`).
    pub unknown: usize,
}

/// Limits on what one block may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_string: usize,
    pub max_fields: usize,
    /// The largest dynamic table size an update may ask for (SETTINGS_HEADER_TABLE_SIZE
    /// as seen; 64 KiB bounds memory when the SETTINGS were not captured).
    pub max_table: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_string: 64 << 10,
            max_fields: 512,
            max_table: 64 << 10,
        }
    }
}

#[derive(Debug)]
pub struct Decoder {
    /// Newest first, as indices count.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    capacity: usize,
    /// The table no longer follows the encoder's (a gap, a mid-stream pickup, an entry of
    /// unknown size).
    pub lost: bool,
    limits: Limits,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(4096, Limits::default())
    }
}

fn entry_size(n: &[u8], v: &[u8]) -> usize {
    n.len() + v.len() + 32
}

impl Decoder {
    pub fn new(capacity: usize, limits: Limits) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            capacity: capacity.min(limits.max_table),
            lost: false,
            limits,
        }
    }

    /// The stream this decoder follows lost bytes: entries inserted there are unknown.
    pub fn mark_lost(&mut self) {
        self.lost = true;
    }

    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    pub fn table_size(&self) -> usize {
        self.size
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= entry_size(&n, &v),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let s = entry_size(&name, &value);
        if s > self.capacity {
            // RFC 7541 4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.capacity - s);
        self.size += s;
        self.table.push_front((name, value));
    }

    /// Entry `i` (1-based, static then dynamic); None when it is not known.
    fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        if i == 0 {
            return None;
        }
        if i <= STATIC.len() {
            let (n, v) = STATIC[i - 1];
            return Some((n.as_bytes(), v.as_bytes()));
        }
        self.table
            .get(i - STATIC.len() - 1)
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    /// Whether index `i` refers to the dynamic table but cannot be trusted (lost state).
    fn unsure(&self, i: usize) -> bool {
        i > STATIC.len() && self.lost
    }

    /// Decodes one whole header block (HEADERS plus its CONTINUATIONs).
    pub fn decode(&mut self, b: &[u8]) -> Result<Block, HpackError> {
        let mut out = Block::default();
        let mut at = 0;
        while at < b.len() {
            if out.fields.len() >= self.limits.max_fields {
                self.lost = true;
                return Err(HpackError::TooManyFields);
            }
            let first = b[at];
            if first & 0x80 != 0 {
                // Indexed field.
                let (i, n) = integer(b, at, 7)?;
                at = n;
                if i == 0 {
                    self.lost = true;
                    return Err(HpackError::ZeroIndex(at));
                }
                match self.get(i).filter(|_| !self.unsure(i)) {
                    Some((name, value)) => out.fields.push(Field {
                        name: Some(name.to_vec()),
                        value: Some(value.to_vec()),
                        sensitive: false,
                    }),
                    None => {
                        out.unknown += 1;
                        out.fields.push(Field {
                            name: None,
                            value: None,
                            sensitive: false,
                        });
                    }
                }
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let (size, n) = integer(b, at, 5)?;
                at = n;
                if size > self.limits.max_table {
                    self.lost = true;
                    return Err(HpackError::SizeAboveLimit(size, self.limits.max_table));
                }
                self.capacity = size;
                self.evict_to(size);
                if size == 0 {
                    // Nothing is left to refer to: the state is known again.
                    self.table.clear();
                    self.size = 0;
                    self.lost = false;
                }
            } else {
                // Literal: with incremental indexing (01), without (0000), never indexed (0001).
                let (prefix, indexing, sensitive) = if first & 0xc0 == 0x40 {
                    (6, true, false)
                } else {
                    (4, false, first & 0x10 != 0)
                };
                let (i, n) = integer(b, at, prefix)?;
                at = n;
                let name = if i == 0 {
                    let (s, n) = self.string(b, at)?;
                    at = n;
                    Some(s)
                } else {
                    match self.get(i).filter(|_| !self.unsure(i)) {
                        Some((name, _)) => Some(name.to_vec()),
                        None => {
                            out.unknown += 1;
                            None
                        }
                    }
                };
                let (value, n) = self.string(b, at)?;
                at = n;
                if indexing {
                    match &name {
                        Some(nm) => self.insert(nm.clone(), value.clone()),
                        // Its size is unknown: from here the table cannot be followed.
                        None => self.lost = true,
                    }
                }
                out.fields.push(Field {
                    name,
                    value: Some(value),
                    sensitive,
                });
            }
        }
        Ok(out)
    }

    fn string(&self, b: &[u8], at: usize) -> Result<(Vec<u8>, usize), HpackError> {
        let huff = b.get(at).ok_or(HpackError::Truncated(at))? & 0x80 != 0;
        let (len, start) = integer(b, at, 7)?;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= b.len())
            .ok_or(HpackError::Truncated(at))?;
        let raw = &b[start..end];
        if huff {
            let mut out = Vec::with_capacity(raw.len() * 8 / 5);
            huffman::decode(raw, self.limits.max_string, &mut out)
                .map_err(|e| HpackError::Huffman(at, e))?;
            Ok((out, end))
        } else {
            if raw.len() > self.limits.max_string {
                return Err(HpackError::StringTooLong(at));
            }
            Ok((raw.to_vec(), end))
        }
    }
}

/// An integer with an N-bit prefix at `b[at]` (RFC 7541 5.1); returns it and where the
/// next byte is.
fn integer(b: &[u8], at: usize, prefix: u8) -> Result<(usize, usize), HpackError> {
    let max = (1usize << prefix) - 1;
    let first = *b.get(at).ok_or(HpackError::Truncated(at))? as usize & max;
    if first < max {
        return Ok((first, at + 1));
    }
    let mut value = max;
    let mut shift = 0u32;
    let mut i = at + 1;
    loop {
        let byte = *b.get(i).ok_or(HpackError::Truncated(i))?;
        i += 1;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow(at));
        }
        value = value
            .checked_add(((byte & 0x7f) as usize) << shift)
            .ok_or(HpackError::IntegerOverflow(at))?;
        if byte & 0x80 == 0 {
            return Ok((value, i));
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn text(b: &Block) -> Vec<(String, String)> {
        b.fields
            .iter()
            .map(|f| {
                let s = |x: &Option<Vec<u8>>| {
                    x.as_ref()
                        .map_or("?".to_string(), |v| String::from_utf8_lossy(v).into_owned())
                };
                (s(&f.name), s(&f.value))
            })
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn integers_of_rfc_7541_c_1() {
        assert_eq!(integer(&[0b0000_1010], 0, 5), Ok((10, 1)));
        assert_eq!(
            integer(&[0b0001_1111, 0b1001_1010, 0b0000_1010], 0, 5),
            Ok((1337, 3))
        );
        assert_eq!(integer(&[42], 0, 8), Ok((42, 1)));
        assert!(integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 0, 5).is_err());
        assert_eq!(integer(&[0x1f, 0x9a], 0, 5), Err(HpackError::Truncated(2)));
    }

    /// The three requests of C.3 (plain) and C.4 (Huffman) share one dynamic table.
    #[test]
    fn requests_of_rfc_7541_c_3_and_c_4() {
        let want = [
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ];
        let plain = [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ];
        let huff = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        for blocks in [plain, huff] {
            let mut d = Decoder::default();
            for (b, w) in blocks.iter().zip(&want) {
                assert_eq!(text(&d.decode(&hex(b)).unwrap()), *w);
            }
            // C.3.3 / C.4.3: the table holds three entries, 164 octets.
            assert_eq!((d.table_len(), d.table_size()), (3, 164));
        }
    }

    /// C.6: responses with Huffman coding and a 256-octet table, evictions included.
    #[test]
    fn responses_of_rfc_7541_c_6_with_evictions() {
        let mut d = Decoder::new(256, Limits::default());
        let blocks = [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ];
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let loc = "https://www.example.com";
        let want = [
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", date1),
                ("location", loc),
            ]),
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", date1),
                ("location", loc),
            ]),
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", loc),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                ),
            ]),
        ];
        let sizes = [222, 222, 215];
        for ((b, w), size) in blocks.iter().zip(&want).zip(sizes) {
            assert_eq!(text(&d.decode(&hex(b)).unwrap()), *w);
            assert_eq!(d.table_size(), size);
        }
        assert!(!d.lost);
    }

    #[test]
    fn blocks_split_anywhere_are_refused_not_misread() {
        let whole = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        for cut in 1..whole.len() {
            let mut d = Decoder::default();
            // A strict prefix either decodes fewer fields or is refused; never more.
            if let Ok(b) = d.decode(&whole[..cut]) {
                assert!(b.fields.len() <= 5, "{cut}");
            }
        }
    }

    #[test]
    fn references_to_entries_never_seen_are_unknown_not_invented() {
        // Picked up mid-connection: index 62 and a literal under name index 63.
        let mut d = Decoder::default();
        d.mark_lost();
        let b = d.decode(&hex("82 be 7f00 03 616263")).unwrap();
        assert_eq!(b.unknown, 2);
        assert_eq!(
            text(&b),
            pairs(&[(":method", "GET"), ("?", "?"), ("?", "abc")])
        );
        assert!(d.lost);
        // A size update to 0 makes the table known again (then back to 4096).
        let b = d
            .decode(&hex("20 3fe11f 4003 666f6f 03 626172 be"))
            .unwrap();
        assert_eq!(text(&b), pairs(&[("foo", "bar"), ("foo", "bar")]));
        assert!(!d.lost && b.unknown == 0);
    }

    #[test]
    fn huffman_round_trips_and_bad_padding_is_refused() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut out = Vec::new();
        huffman::decode(&huffman::encode(&all), 1024, &mut out).unwrap();
        assert_eq!(out, all);
        // 8 bits of padding, and padding that is not all ones.
        assert_eq!(
            huffman::decode(&[0xff], 16, &mut Vec::new()),
            Err(huffman::HuffmanError::BadPadding)
        );
        assert_eq!(
            huffman::decode(&[0x00], 16, &mut Vec::new()),
            Err(huffman::HuffmanError::BadPadding)
        );
        assert_eq!(
            huffman::decode(&huffman::encode(b"www.example.com"), 4, &mut Vec::new()),
            Err(huffman::HuffmanError::TooLong)
        );
    }
}
