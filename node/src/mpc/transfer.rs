//! Transfer test: sends a number of throwaway bytes to a peer over the MPC request-response
//! protocol, in the same acknowledged chunks that carry aggregation shares, and reports the
//! throughput (`POST /v1/peers/{peer_id}/transfer`). It answers "how fast can these two
//! nodes move a share" without any cryptography or storage on top, and is the baseline the
//! benchmarks compare large aggregations with.
//!
//! The receiver keeps nothing: it counts the bytes of each chunk and drops them. It takes at
//! most one transfer per peer at a time and at most [`MAX_TRANSFER_BYTES`] per transfer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tracing::{Instrument, info};

use super::chunks::{CHUNK_BYTES, ChunkAssembly, chunks_of};
use super::session::{SessionError, SessionInbox};
use super::wire::{Body, Protocol, SessionId};
use super::{MpcEngine, MpcError, unreachable_error};

/// Largest transfer test (1 GiB).
pub const MAX_TRANSFER_BYTES: u64 = 1 << 30;

/// Peers that have a transfer running into this node.
#[derive(Default)]
pub struct InboundTransfers(Mutex<HashSet<PeerId>>);

impl InboundTransfers {
    fn begin(&self, peer: PeerId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer)
    }

    fn end(&self, peer: &PeerId) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }
}

/// The outcome of a transfer test, as the API answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferResult {
    pub peer_id: String,
    pub bytes: u64,
    pub chunks: u32,
    pub seconds: f64,
    pub mib_per_second: f64,
}

impl MpcEngine {
    /// Sends `bytes` throwaway bytes to `peer` and waits until it confirms them all.
    pub async fn transfer_test(
        &self,
        peer: PeerId,
        bytes: u64,
    ) -> Result<TransferResult, MpcError> {
        if peer == self.inner.local {
            return Err(MpcError::BadRequest(
                "a transfer test needs another peer; this is the node's own peer id".into(),
            ));
        }
        if bytes == 0 || bytes > MAX_TRANSFER_BYTES {
            return Err(MpcError::BadRequest(format!(
                "`bytes` must be from 1 to {MAX_TRANSFER_BYTES} (1 GiB); got {bytes}"
            )));
        }
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::Transfer, [peer])
            .map_err(|error| MpcError::Session { session, error })?;
        let run = self.run_transfer_sender(inbox, peer, bytes);
        self.run_session(Protocol::Transfer, "sender", session, vec![peer], run)
            .await
            .map_err(|error| MpcError::Session { session, error })
    }

    async fn run_transfer_sender(
        &self,
        mut inbox: SessionInbox,
        peer: PeerId,
        bytes: u64,
    ) -> Result<TransferResult, SessionError> {
        let session = inbox.session();
        let chunks = chunks_of(bytes);
        let start = Instant::now();
        self.send(peer, session, Body::TransferInvite { bytes, chunks })
            .await
            .map_err(|e| unreachable_error(vec![(peer, e)], "the transfer invite"))?;
        // Throwaway bytes in the chunks aggregation shares travel in: one buffer, sent again
        // for every chunk.
        let piece = bytes::Bytes::from(vec![0xa5u8; CHUNK_BYTES.min(bytes as usize)]);
        let pieces = (0..u64::from(chunks)).map(|i| {
            let len = (bytes - i * CHUNK_BYTES as u64).min(CHUNK_BYTES as u64) as usize;
            piece.slice(..len)
        });
        self.send_chunked(peer, session, pieces, |index, data| Body::TransferChunk {
            index,
            data,
        })
        .await
        .map_err(|e| unreachable_error(vec![(peer, e)], "a transfer chunk"))?;
        let got = inbox
            .collect(
                "transfer done",
                &[peer],
                self.inner.round_timeout,
                |b| match b {
                    Body::TransferDone { bytes } => Some(*bytes),
                    _ => None,
                },
            )
            .await?;
        let seconds = start.elapsed().as_secs_f64();
        if got[&peer] != bytes {
            return Err(SessionError::blame(
                vec![peer],
                format!("peer {peer} confirmed {} bytes of {bytes}", got[&peer]),
            ));
        }
        let mib_per_second = bytes as f64 / 1048576.0 / seconds.max(1e-9);
        info!(%peer, bytes, seconds, mib_per_second, "transfer test done");
        Ok(TransferResult {
            peer_id: peer.to_string(),
            bytes,
            chunks,
            seconds,
            mib_per_second,
        })
    }

    /// Answers a transfer invite: counts the chunks and confirms the byte count.
    pub(super) fn join_transfer(
        &self,
        session: SessionId,
        from: PeerId,
        bytes: u64,
        chunks: u32,
    ) -> Result<(), String> {
        if bytes == 0 || bytes > MAX_TRANSFER_BYTES || chunks != chunks_of(bytes) {
            return Err(format!(
                "a transfer is 1 to {MAX_TRANSFER_BYTES} bytes in {CHUNK_BYTES}-byte chunks; not {bytes} bytes in {chunks}"
            ));
        }
        let transfers: Arc<InboundTransfers> = self.inner.transfers.clone();
        if !transfers.begin(from) {
            return Err(format!(
                "a transfer from {from} is running already; one at a time"
            ));
        }
        let inbox = match self.inner.router.open(session, Protocol::Transfer, [from]) {
            Ok(i) => i,
            Err(e) => {
                transfers.end(&from);
                return Err(e.to_string());
            }
        };
        let engine = self.clone();
        tokio::spawn(
            async move {
                let run = engine.run_transfer_receiver(inbox, from, bytes);
                let _ = engine
                    .run_session(Protocol::Transfer, "receiver", session, vec![from], run)
                    .await;
                transfers.end(&from);
            }
            .in_current_span(),
        );
        Ok(())
    }

    async fn run_transfer_receiver(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        bytes: u64,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let mut assembly = ChunkAssembly::new(bytes as usize, false);
        loop {
            // Each chunk must come within a round deadline of the previous one.
            let deadline = tokio::time::Instant::now() + self.inner.round_timeout;
            let (_, result) = inbox
                .next_of("transfer chunk", &[from], deadline, |b| match b {
                    Body::TransferChunk { index, data } => Some(assembly.accept(*index, &data.0)),
                    _ => None,
                })
                .await?;
            match result {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    return Err(SessionError::blame(
                        vec![from],
                        format!("peer {from} sent a bad transfer chunk: {e}"),
                    ));
                }
            }
        }
        let received = bytes;
        self.send(from, session, Body::TransferDone { bytes: received })
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the transfer confirmation"))
    }
}
