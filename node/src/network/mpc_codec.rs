//! The request-response codec of `/p2p-mpc/mpc/1`.
//!
//! Requests are read as raw bytes (at most [`MAX_MESSAGE_BYTES`]) and decoded by the network
//! service only after it has checked the sender against the cluster roster, so a stranger's
//! message costs a bounded read and nothing more. On the wire a request is one CBOR
//! [`MpcMessage`](crate::mpc::wire::MpcMessage), the acknowledgement one CBOR
//! [`MpcAck`]: the same bytes as libp2p's CBOR codec writes.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

use crate::mpc::wire::{MAX_ACK_BYTES, MAX_MESSAGE_BYTES, MpcAck};

/// One encoded MPC message, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawMpc(pub Vec<u8>);

/// Reads requests as [`RawMpc`], acknowledgements as CBOR [`MpcAck`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MpcCodec;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    // One byte more than the limit tells a message over it from one exactly at it.
    io.take(limit + 1).read_to_end(&mut buf).await?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than {limit} bytes"),
        ));
    }
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
        read_limited(io, MAX_MESSAGE_BYTES).await.map(RawMpc)
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
