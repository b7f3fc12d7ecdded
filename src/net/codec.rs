//! A request-response codec: one postcard message per stream, behind a 4-byte big-endian
//! length. Lengths above the limit are refused before anything is allocated.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Postcard codec with size limits on both directions.
pub struct PostcardCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> PostcardCodec<Req, Resp> {
    pub fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for PostcardCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.max_request, self.max_response)
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message exceeds the limit",
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn decode<M: DeserializeOwned>(bytes: &[u8]) -> io::Result<M> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn encode<M: Serialize>(m: &M) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(m).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

impl<Req, Resp> libp2p::request_response::Codec for PostcardCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, self.max_request).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, self.max_response).await?)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&req)?, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&resp)?, self.max_response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let proto = StreamProtocol::new("/t/1");
        let mut c: PostcardCodec<Vec<u8>, String> = PostcardCodec::new(64, 64);
        let mut buf = Vec::new();
        c.write_request(
            &proto,
            &mut futures::io::Cursor::new(&mut buf),
            vec![1, 2, 3],
        )
        .await
        .unwrap();
        let got = c
            .read_request(&proto, &mut futures::io::Cursor::new(&buf))
            .await
            .unwrap();
        assert_eq!(got, vec![1, 2, 3]);

        // A peer announcing a huge length is refused without allocating it.
        let mut evil = (u32::MAX).to_be_bytes().to_vec();
        evil.extend_from_slice(&[0; 8]);
        let err = c
            .read_request(&proto, &mut futures::io::Cursor::new(&evil))
            .await;
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidData);

        // Garbage that is not postcard is an error, not a panic.
        let mut junk = 3u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(
            c.read_response(&proto, &mut futures::io::Cursor::new(&junk))
                .await
                .is_err()
        );
    }
}
