//! Large payloads over the MPC protocol: cut into [`CHUNK_BYTES`] pieces, each its own
//! acknowledged message, with up to [`CHUNK_WINDOW`] in flight to one peer. Pieces may
//! arrive in any order; [`ChunkAssembly`] puts each in its place and refuses duplicates,
//! pieces of the wrong size and indexes out of range.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;

use super::MpcEngine;
use super::wire::{Blob, Body, SessionId};
use crate::mpc::transport::MpcSendError;

/// Payload bytes per chunk message (the session layer caps a message at 256 KiB).
pub const CHUNK_BYTES: usize = 192 * 1024;
/// Chunk messages in flight to one peer at once: enough to keep a loopback or LAN link busy
/// while one is acknowledged, few enough that a receiver buffers at most this many per sender.
pub const CHUNK_WINDOW: usize = 8;

/// Number of chunks of a payload of `len` bytes (at least one).
pub fn chunks_of(len: u64) -> u32 {
    len.div_ceil(CHUNK_BYTES as u64).max(1) as u32
}

/// `payload` cut into chunk pieces, without copying.
pub fn pieces(payload: Bytes) -> impl Iterator<Item = Bytes> {
    let len = payload.len();
    (0..chunks_of(len as u64) as usize)
        .map(move |i| payload.slice(i * CHUNK_BYTES..((i + 1) * CHUNK_BYTES).min(len)))
}

impl MpcEngine {
    /// Sends `pieces` (see [`pieces`]) to `peer` as chunk messages built by
    /// `make(index, piece)`, up to [`CHUNK_WINDOW`] at a time; returns when every chunk was
    /// acknowledged.
    pub(super) async fn send_chunked(
        &self,
        peer: PeerId,
        session: SessionId,
        pieces: impl Iterator<Item = Bytes>,
        make: fn(u32, Blob) -> Body,
    ) -> Result<(), MpcSendError> {
        let mut pieces = pieces.enumerate();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < CHUNK_WINDOW {
                let Some((index, piece)) = pieces.next() else {
                    break;
                };
                in_flight.push(self.send(peer, session, make(index as u32, Blob(piece))));
            }
            match in_flight.next().await {
                Some(sent) => sent?,
                None => break,
            }
        }
        Ok(())
    }
}

/// Reassembles one payload of a known length from chunks that may come in any order.
#[derive(Debug)]
pub struct ChunkAssembly {
    len: usize,
    chunks: u32,
    seen: Vec<bool>,
    received: u32,
    /// The payload, when it is kept (a transfer test only counts).
    buffer: Option<Vec<u8>>,
}

impl ChunkAssembly {
    /// Expects `len` bytes; `keep` keeps them (else they are only checked and counted).
    pub fn new(len: usize, keep: bool) -> Self {
        let chunks = chunks_of(len as u64);
        Self {
            len,
            chunks,
            seen: vec![false; chunks as usize],
            received: 0,
            buffer: keep.then(|| vec![0u8; len]),
        }
    }

    /// Takes chunk `index`; `Ok(true)` once every chunk is in. The error says what was wrong.
    pub fn accept(&mut self, index: u32, data: &[u8]) -> Result<bool, String> {
        let i = index as usize;
        if index >= self.chunks {
            return Err(format!(
                "chunk {index} is out of range (the payload has {} chunks)",
                self.chunks
            ));
        }
        if self.seen[i] {
            return Err(format!("chunk {index} came twice"));
        }
        let start = i * CHUNK_BYTES;
        let want = (self.len - start).min(CHUNK_BYTES);
        if data.len() != want {
            return Err(format!(
                "chunk {index} holds {} bytes; it must hold {want}",
                data.len()
            ));
        }
        if let Some(buffer) = &mut self.buffer {
            buffer[start..start + want].copy_from_slice(data);
        }
        self.seen[i] = true;
        self.received += 1;
        Ok(self.received == self.chunks)
    }

    /// The payload, once complete and kept.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        (self.received == self.chunks)
            .then_some(self.buffer)
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_in_any_order_make_the_payload() {
        let payload: Vec<u8> = (0..(2 * CHUNK_BYTES + 77)).map(|i| i as u8).collect();
        let pieces: Vec<Bytes> = super::pieces(Bytes::from(payload.clone())).collect();
        assert_eq!(pieces.len() as u32, chunks_of(payload.len() as u64));
        assert_eq!(pieces[2].len(), 77);
        let mut a = ChunkAssembly::new(payload.len(), true);
        assert_eq!(a.accept(2, &pieces[2]), Ok(false));
        assert_eq!(a.accept(0, &pieces[0]), Ok(false));
        assert_eq!(a.accept(1, &pieces[1]), Ok(true));
        assert_eq!(a.into_bytes().unwrap(), payload);
    }

    #[test]
    fn bad_chunks_are_refused_with_the_reason() {
        let mut a = ChunkAssembly::new(CHUNK_BYTES + 10, false);
        assert!(a.accept(2, &[0; 10]).unwrap_err().contains("out of range"));
        assert!(a.accept(1, &[0; 11]).unwrap_err().contains("must hold 10"));
        assert!(a.accept(0, &[0; 5]).unwrap_err().contains("must hold"));
        assert_eq!(a.accept(1, &[0; 10]), Ok(false));
        assert!(a.accept(1, &[0; 10]).unwrap_err().contains("twice"));
        assert_eq!(a.accept(0, &vec![0; CHUNK_BYTES]), Ok(true));
        // Nothing kept when not asked to.
        assert_eq!(a.into_bytes(), None);
        // An empty payload is one empty chunk.
        assert_eq!(super::pieces(Bytes::new()).count(), 1);
        let mut e = ChunkAssembly::new(0, true);
        assert_eq!(e.accept(0, &[]), Ok(true));
        assert_eq!(e.into_bytes(), Some(vec![]));
    }
}
