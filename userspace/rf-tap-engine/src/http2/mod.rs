//! HTTP/2 (RFC 9113), passive. So far: HPACK header decompression (RFC 7541) with its
//! static Huffman code, following each direction's dynamic table and saying where it lost
//! track; frames and streams made exchanges ([`conn`]).
pub mod conn;
pub mod hpack;
pub mod huffman;
