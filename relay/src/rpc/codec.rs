//! Protobuf over gRPC with small starting buffers. tonic's default codec gives every call and
//! every stream an 8 KiB encode buffer up front; on an idle stream that was most of what the
//! stream itself cost. Buffers start at [`BUFFER`] and grow as messages need: a stream of large
//! messages reaches the same sizes, an idle one never does.

use std::marker::PhantomData;

use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The starting buffer of a call's encoder and decoder: a typical message (an idle stream holds
/// one for as long as it lasts; 1 KiB here was a tenth of a multiplexed stream's memory).
const BUFFER: usize = 256;
/// How much a stream encodes before it yields a chunk to HTTP/2 (tonic's default).
const YIELD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD)
}

/// The codec named in `build.rs` for every relay method.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
