//! Writing synthetic captures of TCP conversations: handshake, data segments in both
//! directions with their acknowledgements, and the close. Tests, the demo and the benches
//! build HTTP captures with it (the capture a replay reads back, byte for byte what a
//! sniffer on the server would have seen).

use std::{
    io::{self, Write},
    net::SocketAddrV4,
    time::Duration,
};

/// Payload bytes per segment (an Ethernet MSS).
const MSS: usize = 1448;

/// One TCP connection being written.
#[derive(Clone, Debug)]
pub struct Conversation {
    client: SocketAddrV4,
    server: SocketAddrV4,
    client_seq: u32,
    server_seq: u32,
}

/// A nanosecond pcap (Ethernet) written as conversations go.
pub struct SynthWriter<W: Write> {
    out: W,
    frame: Vec<u8>,
    frames: u64,
}

impl<W: Write> SynthWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&262_144u32.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        out.write_all(&h)?;
        Ok(Self {
            out,
            frame: Vec::with_capacity(2048),
            frames: 0,
        })
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    fn segment(
        &mut self,
        ts: Duration,
        c: &Conversation,
        from_client: bool,
        flags: (bool, bool, bool),
        payload: &[u8],
    ) -> io::Result<()> {
        let (src, dst, seq, ack) = if from_client {
            (c.client, c.server, c.client_seq, c.server_seq)
        } else {
            (c.server, c.client, c.server_seq, c.client_seq)
        };
        let (syn, fin, has_ack) = flags;
        let mut b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.ip().octets(), dst.ip().octets(), 64)
            .tcp(src.port(), dst.port(), seq, 65_535);
        if syn {
            b = b.syn();
        }
        if fin {
            b = b.fin();
        }
        if has_ack {
            b = b.ack(ack);
        }
        self.frame.clear();
        b.write(&mut self.frame, payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let len = self.frame.len() as u32;
        let ns = ts.as_nanos();
        let mut rec = [0u8; 16];
        rec[..4].copy_from_slice(&((ns / 1_000_000_000) as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&((ns % 1_000_000_000) as u32).to_le_bytes());
        rec[8..12].copy_from_slice(&len.to_le_bytes());
        rec[12..].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&rec)?;
        self.out.write_all(&self.frame)?;
        self.frames += 1;
        Ok(())
    }

    /// Writes the three-way handshake at `ts`.
    pub fn open(
        &mut self,
        ts: Duration,
        client: SocketAddrV4,
        server: SocketAddrV4,
    ) -> io::Result<Conversation> {
        let mut c = Conversation {
            client,
            server,
            client_seq: 1_000,
            server_seq: 5_000,
        };
        self.segment(ts, &c, true, (true, false, false), &[])?;
        c.client_seq = c.client_seq.wrapping_add(1);
        self.segment(
            ts + Duration::from_micros(20),
            &c,
            false,
            (true, false, true),
            &[],
        )?;
        c.server_seq = c.server_seq.wrapping_add(1);
        self.segment(
            ts + Duration::from_micros(40),
            &c,
            true,
            (false, false, true),
            &[],
        )?;
        Ok(c)
    }

    /// Writes `bytes` from one side at `ts` in MSS-sized segments, and the peer's ACK.
    pub fn send(
        &mut self,
        c: &mut Conversation,
        ts: Duration,
        from_client: bool,
        bytes: &[u8],
    ) -> io::Result<()> {
        for (i, chunk) in bytes.chunks(MSS).enumerate() {
            let at = ts + Duration::from_nanos(i as u64 * 1_000);
            self.segment(at, c, from_client, (false, false, true), chunk)?;
            let n = chunk.len() as u32;
            if from_client {
                c.client_seq = c.client_seq.wrapping_add(n);
            } else {
                c.server_seq = c.server_seq.wrapping_add(n);
            }
        }
        let end = ts + Duration::from_nanos(bytes.len().div_ceil(MSS) as u64 * 1_000 + 5_000);
        self.segment(end, c, !from_client, (false, false, true), &[])
    }

    /// One request at `ts` and its response `latency` later.
    pub fn exchange(
        &mut self,
        c: &mut Conversation,
        ts: Duration,
        request: &[u8],
        latency: Duration,
        response: &[u8],
    ) -> io::Result<()> {
        self.send(c, ts, true, request)?;
        self.send(c, ts + latency, false, response)
    }

    /// The client closes at `ts`, the server follows.
    pub fn close(&mut self, c: &mut Conversation, ts: Duration) -> io::Result<()> {
        self.segment(ts, c, true, (false, true, true), &[])?;
        c.client_seq = c.client_seq.wrapping_add(1);
        self.segment(
            ts + Duration::from_micros(20),
            c,
            false,
            (false, true, true),
            &[],
        )?;
        c.server_seq = c.server_seq.wrapping_add(1);
        self.segment(
            ts + Duration::from_micros(40),
            c,
            true,
            (false, false, true),
            &[],
        )
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{extract_all, ExtractConfig};

    #[test]
    fn a_written_conversation_extracts_to_its_exchanges() {
        let mut w = SynthWriter::new(Vec::new()).unwrap();
        let t = Duration::from_secs(1_763_719_200);
        let mut c = w
            .open(
                t,
                "10.0.0.1:40000".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
            )
            .unwrap();
        let big = vec![b'x'; 5000];
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
        resp.extend_from_slice(&big);
        w.exchange(
            &mut c,
            t + Duration::from_millis(1),
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
            Duration::from_millis(3),
            &resp,
        )
        .unwrap();
        w.exchange(
            &mut c,
            t + Duration::from_millis(10),
            b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n",
            Duration::from_millis(2),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        w.close(&mut c, t + Duration::from_millis(20)).unwrap();
        let bytes = w.finish().unwrap();
        let (xs, stopped) = extract_all(&bytes, ExtractConfig::default()).unwrap();
        assert!(stopped.is_none());
        let got: Vec<(String, u16, u64)> = xs
            .iter()
            .map(|x| {
                (
                    x.request.as_ref().unwrap().target.clone(),
                    x.response.as_ref().unwrap().status,
                    x.response.as_ref().unwrap().body.len,
                )
            })
            .collect();
        assert_eq!(got, vec![("/a".into(), 200, 5000), ("/b".into(), 404, 0)]);
        let lat = xs[0].latency_ms().unwrap();
        assert!((2.9..3.1).contains(&lat), "{lat}");
    }
}
