//! The record codec and the reading of the redemption script's answer,
//! for the fuzz targets (the `fuzzing` feature; see `crate::fuzzing`).

use super::{PendingAuthorization, Redemption, StoreError};
use crate::store::CodeBinding;

/// Reads a pending authorization as Redis holds it.
///
/// # Errors
///
/// [`StoreError::Unavailable`] for a record not in the expected form.
pub fn decode_pending(bytes: &[u8]) -> Result<PendingAuthorization, StoreError> {
    super::codec::decode_pending(bytes)
}

/// Writes a pending authorization as Redis holds it.
pub fn encode_pending(record: &PendingAuthorization) -> Vec<u8> {
    super::codec::encode_pending(record)
}

/// Reads a code binding as Redis holds it.
///
/// # Errors
///
/// [`StoreError::Unavailable`] for a record not in the expected form.
pub fn decode_binding(bytes: &[u8]) -> Result<CodeBinding, StoreError> {
    super::codec::decode_binding(bytes)
}

/// Writes a code binding as Redis holds it.
pub fn encode_binding(binding: &CodeBinding) -> Vec<u8> {
    super::codec::encode_binding(binding)
}

/// Reads the redemption script's answer when it is an integer.
///
/// # Errors
///
/// [`StoreError::Unavailable`] for an answer the script never gives.
pub fn redemption_int(answer: i64) -> Result<Redemption, StoreError> {
    super::codec::redemption(::redis::Value::Int(answer))
}

/// Reads the redemption script's answer when it is a record.
///
/// # Errors
///
/// [`StoreError::Unavailable`] for a record not in the expected form.
pub fn redemption_bulk(answer: Vec<u8>) -> Result<Redemption, StoreError> {
    super::codec::redemption(::redis::Value::BulkString(answer))
}
