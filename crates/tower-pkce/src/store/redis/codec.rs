//! The binary form of records in Redis, and the reading of the redemption
//! script's answer.

use super::unavailable;
use crate::pkce::ChallengeMethod;
use crate::store::{Challenge, CodeBinding, PendingAuthorization, Redemption, StoreError};

/// Reads the answer of the `REDEEM` script.
pub(super) fn redemption(answer: redis::Value) -> Result<Redemption, StoreError> {
    match answer {
        redis::Value::BulkString(bytes) => decode_binding(&bytes).map(Redemption::Redeemed),
        redis::Value::Int(0) => Ok(Redemption::Missing),
        redis::Value::Int(1) => Ok(Redemption::Spent),
        redis::Value::Int(2) => Ok(Redemption::Expired),
        _ => Err(corrupt()),
    }
}

// Records are written in a small binary form, versioned by its first byte.
pub(super) const FORMAT: u8 = 1;
const HAS_CHALLENGE: u8 = 1;
const HAS_REDIRECT_URI: u8 = 2;
const HAS_STATE: u8 = 4;

fn method_byte(method: ChallengeMethod) -> u8 {
    match method {
        ChallengeMethod::S256 => 1,
        ChallengeMethod::Plain => 2,
    }
}

/// Writes the fields a pending authorization and a binding share.
fn encode_common(
    out: &mut Vec<u8>,
    challenge: Option<Challenge>,
    client: &[u8; 16],
    redirect_uri: Option<&[u8; 16]>,
    state: bool,
) {
    let mut flags = 0;
    if challenge.is_some() {
        flags |= HAS_CHALLENGE;
    }
    if redirect_uri.is_some() {
        flags |= HAS_REDIRECT_URI;
    }
    if state {
        flags |= HAS_STATE;
    }
    out.extend_from_slice(&[FORMAT, flags]);
    if let Some(challenge) = challenge {
        out.push(method_byte(challenge.method));
        out.extend_from_slice(&challenge.digest);
    }
    out.extend_from_slice(client);
    if let Some(uri) = redirect_uri {
        out.extend_from_slice(uri);
    }
}

pub(super) fn encode_pending(record: &PendingAuthorization) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 33 + 32 + record.state.as_ref().map_or(0, |s| s.len()));
    encode_common(
        &mut out,
        record.challenge,
        &record.client,
        record.redirect_uri.as_ref(),
        record.state.is_some(),
    );
    if let Some(state) = &record.state {
        out.extend_from_slice(state.as_bytes());
    }
    out
}

pub(super) fn encode_binding(binding: &CodeBinding) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 33 + 32 + 1);
    encode_common(
        &mut out,
        binding.challenge,
        &binding.client,
        binding.redirect_uri.as_ref(),
        false,
    );
    out.push(binding.failures);
    out
}

/// The shared fields as read back, and the bytes after them.
struct Common<'a> {
    challenge: Option<Challenge>,
    client: [u8; 16],
    redirect_uri: Option<[u8; 16]>,
    has_state: bool,
    rest: &'a [u8],
}

fn corrupt() -> StoreError {
    unavailable("a record in Redis is not in the expected form")
}

fn take<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], StoreError> {
    let (head, tail) = bytes.split_first_chunk::<N>().ok_or_else(corrupt)?;
    *bytes = tail;
    Ok(*head)
}

fn decode_common(mut bytes: &[u8]) -> Result<Common<'_>, StoreError> {
    let [format, flags] = take::<2>(&mut bytes)?;
    if format != FORMAT || flags & !(HAS_CHALLENGE | HAS_REDIRECT_URI | HAS_STATE) != 0 {
        return Err(corrupt());
    }
    let challenge = if flags & HAS_CHALLENGE != 0 {
        let [method] = take::<1>(&mut bytes)?;
        let method = match method {
            1 => ChallengeMethod::S256,
            2 => ChallengeMethod::Plain,
            _ => return Err(corrupt()),
        };
        Some(Challenge {
            method,
            digest: take::<32>(&mut bytes)?,
        })
    } else {
        None
    };
    let client = take::<16>(&mut bytes)?;
    let redirect_uri = if flags & HAS_REDIRECT_URI != 0 {
        Some(take::<16>(&mut bytes)?)
    } else {
        None
    };
    Ok(Common {
        challenge,
        client,
        redirect_uri,
        has_state: flags & HAS_STATE != 0,
        rest: bytes,
    })
}

pub(super) fn decode_pending(bytes: &[u8]) -> Result<PendingAuthorization, StoreError> {
    let common = decode_common(bytes)?;
    let state = if common.has_state {
        let text = std::str::from_utf8(common.rest).map_err(|_| corrupt())?;
        Some(Box::from(text))
    } else if common.rest.is_empty() {
        None
    } else {
        return Err(corrupt());
    };
    Ok(PendingAuthorization {
        challenge: common.challenge,
        client: common.client,
        redirect_uri: common.redirect_uri,
        state,
    })
}

pub(super) fn decode_binding(bytes: &[u8]) -> Result<CodeBinding, StoreError> {
    let common = decode_common(bytes)?;
    match (common.has_state, common.rest) {
        (false, &[failures]) => Ok(CodeBinding {
            challenge: common.challenge,
            client: common.client,
            redirect_uri: common.redirect_uri,
            failures,
        }),
        _ => Err(corrupt()),
    }
}
