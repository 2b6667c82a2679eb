//! The request-response codec of `/p2p-mpc/mpc/1`.
//!
//! Requests are read as raw bytes (at most [`MAX_MESSAGE_BYTES`]) and decoded by the network
//! service only after it has checked the sender against the cluster roster, so a stranger's
//! message costs a bounded read and nothing more. On the wire a request is one CBOR
//! [`MpcMessage`](crate::mpc::wire::MpcMessage), the acknowledgement one CBOR
//! [`MpcAck`]: the same bytes as libp2p's CBOR codec writes.
//!
//! The bytes of requests still being read are bounded twice: per connection by the number
//! of concurrent streams (see `network::behaviour`) times [`MAX_MESSAGE_BYTES`], and on all
//! connections together by a [`ReadBudget`]. A read that would take the node over its budget
//! fails at once and the stream is dropped (the sender sees its request fail), so a peer that
//! opens many streams and writes them slowly holds at most the budget until its requests
//! time out.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use prometheus::{IntCounter, IntGauge};

use crate::mpc::wire::{MAX_ACK_BYTES, MAX_MESSAGE_BYTES, MpcAck};

/// Default bound on the bytes of inbound MPC requests being read, in MiB.
pub const DEFAULT_MAX_READING_MIB: u32 = 64;

/// One encoded MPC message, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawMpc(pub Vec<u8>);

/// The bytes of inbound requests being read on every connection, and their bound.
#[derive(Debug)]
pub struct ReadBudget {
    limit: u64,
    held: AtomicU64,
    /// Bytes being read now (`p2p_mpc_mpc_reading_bytes`).
    pub reading: IntGauge,
    /// Requests dropped because the budget was full (`p2p_mpc_mpc_reads_refused_total`).
    pub refused: IntCounter,
}

impl ReadBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicU64::new(0),
            reading: IntGauge::new(
                "p2p_mpc_mpc_reading_bytes",
                "Bytes of inbound MPC requests being read (buffers of unfinished requests).",
            )
            .expect("valid metric"),
            refused: IntCounter::new(
                "p2p_mpc_mpc_reads_refused_total",
                "Inbound MPC requests dropped while being read: the node's read budget (mpc_max_reading_mib) was full.",
            )
            .expect("valid metric"),
        })
    }

    /// Bytes being read now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Takes `bytes` more, unless that would pass the limit.
    fn take(&self, bytes: u64) -> bool {
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if taken {
            self.reading.add(bytes as i64);
        }
        taken
    }

    fn give_back(&self, bytes: u64) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
        self.reading.sub(bytes as i64);
    }
}

/// What one read holds of a [`ReadBudget`]; given back when dropped.
struct Reading<'a> {
    budget: &'a ReadBudget,
    bytes: u64,
}

impl Reading<'_> {
    /// Holds `bytes` in all, or fails (and counts the refusal) when the budget is full.
    fn grow_to(&mut self, bytes: u64) -> io::Result<()> {
        if bytes > self.bytes {
            if !self.budget.take(bytes - self.bytes) {
                self.budget.refused.inc();
                return Err(io::Error::other(
                    "the node's budget for inbound MPC requests being read is full",
                ));
            }
            self.bytes = bytes;
        }
        Ok(())
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Reads requests as [`RawMpc`], acknowledgements as CBOR [`MpcAck`].
#[derive(Debug, Clone)]
pub struct MpcCodec {
    budget: Arc<ReadBudget>,
}

impl MpcCodec {
    /// A codec whose request reads share `budget`.
    pub fn new(budget: Arc<ReadBudget>) -> Self {
        Self { budget }
    }
}

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    // One byte more than the limit tells a message over it from one exactly at it.
    io.take(limit + 1).read_to_end(&mut buf).await?;
    too_long(buf.len(), limit)?;
    Ok(buf)
}

fn too_long(len: usize, limit: u64) -> io::Result<()> {
    if len as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than {limit} bytes"),
        ));
    }
    Ok(())
}

/// Reads one request of at most `limit` bytes, its buffer held in `budget` while it grows
/// (from 4 KiB, doubling), so a message costs the budget what it costs the allocator.
async fn read_budgeted<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: u64,
    budget: &ReadBudget,
) -> io::Result<Vec<u8>> {
    let mut reading = Reading { budget, bytes: 0 };
    let mut buf = Vec::new();
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            too_long(filled, limit)?;
            let next = (filled * 2).clamp(4096, limit as usize + 1);
            reading.grow_to(next as u64)?;
            buf.resize(next, 0);
        }
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

impl Codec for MpcCodec {
    type Protocol = StreamProtocol;
    type Request = RawMpc;
    type Response = MpcAck;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RawMpc>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_budgeted(io, MAX_MESSAGE_BYTES, &self.budget)
            .await
            .map(RawMpc)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<MpcAck>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_limited(io, MAX_ACK_BYTES).await?;
        cbor4ii::serde::from_slice(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RawMpc,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.0).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: MpcAck,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let data = cbor4ii::serde::to_vec(Vec::new(), &res)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        io.write_all(&data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn read(budget: &ReadBudget, len: usize) -> io::Result<Vec<u8>> {
        let mut io = Cursor::new(vec![7u8; len]);
        futures::executor::block_on(read_budgeted(&mut io, MAX_MESSAGE_BYTES, budget))
    }

    #[test]
    fn a_request_is_read_whole_and_its_bytes_given_back() {
        let budget = ReadBudget::new(1024 * 1024);
        for len in [0, 1, 4095, 4096, 4097, 100_000, MAX_MESSAGE_BYTES as usize] {
            assert_eq!(read(&budget, len).unwrap().len(), len);
            assert_eq!(budget.held(), 0, "a finished read holds nothing");
        }
        assert_eq!(budget.refused.get(), 0);
        let err = read(&budget, MAX_MESSAGE_BYTES as usize + 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_read_past_the_budget_fails_and_is_counted() {
        // 64 KiB: room for one buffer of 64 KiB, not for the 128 KiB that a 100 KB request grows to.
        let budget = ReadBudget::new(64 * 1024);
        assert_eq!(read(&budget, 60_000).unwrap().len(), 60_000);
        let err = read(&budget, 100_000).unwrap_err();
        assert!(err.to_string().contains("budget"), "{err}");
        assert_eq!(budget.refused.get(), 1);
        assert_eq!(budget.held(), 0, "the refused read gave its bytes back");

        // What unfinished reads hold counts: with 40 KiB held elsewhere, a 30 KB read fails.
        let mut other = Reading {
            budget: &budget,
            bytes: 0,
        };
        other.grow_to(40 * 1024).unwrap();
        assert_eq!(budget.reading.get(), 40 * 1024);
        assert!(read(&budget, 30_000).is_err());
        assert_eq!(budget.refused.get(), 2);
        drop(other);
        assert_eq!(read(&budget, 30_000).unwrap().len(), 30_000);
        assert_eq!((budget.held(), budget.reading.get()), (0, 0));
    }
}
