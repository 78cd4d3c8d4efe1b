//! Record payloads: values of the log's record type, serialized once with rkyv.

use std::{fmt, marker::PhantomData};

use rkyv::{
    Archive, Portable, Serialize,
    api::high::{HighSerializer, HighValidator},
    bytecheck::CheckBytes,
    rancor,
    ser::allocator::ArenaHandle,
    util::AlignedVec,
};

use crate::{Error, Result};

/// A type the log can store: rkyv-serializable (into a buffer of its own, or at the end of
/// a [`Batch`](crate::Batch)'s), with a validatable archived form.
///
/// Implemented for every type deriving `rkyv::{Archive, Serialize}` with `CheckBytes`
/// on its archived form (rkyv's default `bytecheck` feature).
pub trait Payload:
    Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
    + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
    + for<'a, 'b> Serialize<HighSerializer<&'b mut AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Payload for T where
    T: Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
        + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
        + for<'a, 'b> Serialize<HighSerializer<&'b mut AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// The rkyv bytes of one `T`, known to be a valid archive: ready to append.
///
/// Build one with [`Encoded::new`] from a value, or with [`Encoded::from_bytes`] from bytes
/// that crossed a trust boundary (a peer, a file), which validates them. Either computes the
/// bytes' CRC32C once, on the caller's thread, so the log's single writer does not.
pub struct Encoded<T> {
    bytes: AlignedVec,
    /// CRC32C of `bytes`.
    crc: u32,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Encoded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoded")
            .field("len", &self.bytes.len())
            .field("crc", &self.crc)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            crc: self.crc,
            _type: PhantomData,
        }
    }
}

impl<T: Payload> Encoded<T> {
    /// Serializes `value`.
    ///
    /// # Errors
    /// [`Error::Encode`] if rkyv cannot serialize the value.
    pub fn new(value: &T) -> Result<Self> {
        let bytes =
            rkyv::to_bytes::<rancor::Error>(value).map_err(|source| Error::Encode { source })?;
        Ok(Self::checksummed(bytes))
    }

    /// Validates untrusted bytes as an archived `T` and takes a copy.
    ///
    /// # Errors
    /// [`Error::InvalidPayload`] if the bytes are not a valid archive of `T`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut aligned = AlignedVec::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        validate::<T>(&aligned).map_err(|source| Error::InvalidPayload { source })?;
        Ok(Self::checksummed(aligned))
    }

    /// The archived value (validated when this was built).
    ///
    /// # Panics
    /// Never for a value built by this type's constructors.
    pub fn archived(&self) -> &T::Archived {
        rkyv::access::<T::Archived, rancor::Error>(&self.bytes)
            .expect("Encoded holds validated bytes")
    }
}

impl<T> Encoded<T> {
    fn checksummed(bytes: AlignedVec) -> Self {
        let crc = crate::frame::payload_crc(&bytes);
        Self {
            bytes,
            crc,
            _type: PhantomData,
        }
    }

    /// CRC32C of the encoded bytes, computed once when this was built.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length of the encoded bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the encoding is empty (zero-sized types).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Validates `bytes` (16-aligned) as an archived `T`.
pub(crate) fn validate<T: Payload>(bytes: &[u8]) -> Result<(), rancor::Error> {
    rkyv::access::<T::Archived, rancor::Error>(bytes).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_validation() {
        let encoded = Encoded::<String>::new(&"hello".to_owned()).unwrap();
        let copy = Encoded::<String>::from_bytes(encoded.as_bytes()).unwrap();
        assert_eq!(copy.archived().as_str(), "hello");
    }

    #[test]
    fn garbage_is_an_invalid_payload() {
        let not_a_bool = Encoded::<bool>::from_bytes(&[2]).unwrap_err();
        assert!(matches!(not_a_bool, Error::InvalidPayload { .. }));
        let too_short = Encoded::<String>::from_bytes(&[1, 2, 3]).unwrap_err();
        assert!(matches!(too_short, Error::InvalidPayload { .. }));
    }
}
