//! PKCE values: the verifier, the challenge, and the check that binds them
//! ([RFC 7636](https://www.rfc-editor.org/rfc/rfc7636)).
//!
//! These types serve both sides. A client generates a [`CodeVerifier`] and
//! sends the derived [`CodeChallenge`]; the middleware checks a presented
//! verifier against the recorded challenge with [`verify`].

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest verifier or plain challenge RFC 7636 §4.1 allows.
pub const MIN_LEN: usize = 43;
/// The longest verifier or plain challenge RFC 7636 §4.1 allows.
pub const MAX_LEN: usize = 128;
/// The length of an S256 challenge: 32 bytes in base64url without padding.
pub const S256_CHALLENGE_LEN: usize = 43;

/// The `code_challenge_method` of an authorization request (RFC 7636 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChallengeMethod {
    /// `S256`: the challenge is `BASE64URL(SHA256(verifier))`.
    S256,
    /// `plain`: the challenge is the verifier itself. RFC 9700 §2.1.1 says
    /// clients should not use it.
    Plain,
}

impl ChallengeMethod {
    /// The method's name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::S256 => "S256",
            Self::Plain => "plain",
        }
    }

    /// Parses a method name. Names are case-sensitive (RFC 7636 §4.2).
    ///
    /// # Errors
    ///
    /// [`PkceError::UnknownMethod`] for anything but `S256` and `plain`.
    pub fn parse(name: &str) -> Result<Self, PkceError> {
        match name {
            "S256" => Ok(Self::S256),
            "plain" => Ok(Self::Plain),
            _ => Err(PkceError::UnknownMethod),
        }
    }
}

impl fmt::Display for ChallengeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a PKCE value was refused. The messages never contain the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PkceError {
    /// A verifier or plain challenge shorter than 43 or longer than 128 characters.
    Length,
    /// A character outside `[A-Za-z0-9-._~]` (RFC 7636 §4.1).
    Charset,
    /// An S256 challenge that is not 43 characters of unpadded base64url.
    S256Format,
    /// A `code_challenge_method` other than `S256` or `plain`.
    UnknownMethod,
}

impl fmt::Display for PkceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Length => "must be between 43 and 128 characters long",
            Self::Charset => "may only contain the characters A-Z a-z 0-9 - . _ ~",
            Self::S256Format => {
                "an S256 code_challenge must be 43 characters of base64url without padding"
            }
            Self::UnknownMethod => "code_challenge_method must be S256 or plain",
        })
    }
}

impl std::error::Error for PkceError {}

/// RFC 3986 unreserved characters, as a table: the check runs on every
/// token request.
static UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
};

/// Whether `b` is an RFC 3986 unreserved character.
pub(crate) fn is_unreserved(b: u8) -> bool {
    UNRESERVED[usize::from(b)]
}

/// Checks the RFC 7636 §4.1 rules shared by verifiers and plain challenges.
pub(crate) fn check_unreserved(value: &str) -> Result<(), PkceError> {
    if !(MIN_LEN..=MAX_LEN).contains(&value.len()) {
        return Err(PkceError::Length);
    }
    if !value.bytes().all(is_unreserved) {
        return Err(PkceError::Charset);
    }
    Ok(())
}

/// A PKCE `code_verifier`: a high-entropy secret that only the client knows.
///
/// It is deliberately not `Clone`, and its `Debug` output is `[redacted]`.
///
/// ```
/// use tower_pkce::CodeVerifier;
///
/// let verifier = CodeVerifier::generate();
/// assert_eq!(verifier.secret().len(), 43);
/// assert_eq!(format!("{verifier:?}"), "CodeVerifier([redacted])");
/// assert!(CodeVerifier::new("too-short".to_owned()).is_err());
/// ```
pub struct CodeVerifier(String);

impl CodeVerifier {
    /// Wraps a verifier after checking RFC 7636 §4.1: 43 to 128 characters
    /// of `[A-Za-z0-9-._~]`.
    ///
    /// # Errors
    ///
    /// [`PkceError::Length`] or [`PkceError::Charset`].
    pub fn new(value: String) -> Result<Self, PkceError> {
        check_unreserved(&value)?;
        Ok(Self(value))
    }

    /// A fresh verifier: 32 bytes from the operating system's random number
    /// generator, base64url-encoded without padding (RFC 7636 §4.1, 256 bits
    /// of entropy).
    ///
    /// # Panics
    ///
    /// If the operating system cannot provide random bytes, which on
    /// supported platforms does not happen once the system has booted.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The secret value.
    ///
    /// # Warning
    ///
    /// This is a credential. Do not log it, put it in a URL, or keep it
    /// longer than the authorization flow that needs it.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CodeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeVerifier([redacted])")
    }
}

/// A PKCE `code_challenge` together with its method.
///
/// ```
/// use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};
///
/// // RFC 7636 Appendix B.
/// let verifier = CodeVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned())?;
/// let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
/// assert_eq!(challenge.as_str(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
/// # Ok::<(), tower_pkce::PkceError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CodeChallenge {
    value: String,
    method: ChallengeMethod,
}

impl CodeChallenge {
    /// Validates a challenge received in an authorization request.
    ///
    /// An S256 challenge must be exactly 43 characters of base64url without
    /// padding (the encoding of a SHA-256 digest). A plain challenge follows
    /// the verifier rules of RFC 7636 §4.1.
    ///
    /// # Errors
    ///
    /// [`PkceError::S256Format`], [`PkceError::Length`] or [`PkceError::Charset`].
    pub fn new(value: String, method: ChallengeMethod) -> Result<Self, PkceError> {
        match method {
            ChallengeMethod::S256 => {
                s256_challenge_digest(&value).ok_or(PkceError::S256Format)?;
            }
            ChallengeMethod::Plain => check_unreserved(&value)?,
        }
        Ok(Self { value, method })
    }

    /// Derives the challenge a client sends for `verifier` (RFC 7636 §4.2).
    pub fn from_verifier(verifier: &CodeVerifier, method: ChallengeMethod) -> Self {
        let value = match method {
            ChallengeMethod::S256 => s256(verifier.secret().as_bytes()),
            ChallengeMethod::Plain => verifier.secret().to_owned(),
        };
        Self { value, method }
    }

    /// The challenge as sent in `code_challenge`.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The challenge method.
    pub fn method(&self) -> ChallengeMethod {
        self.method
    }

    /// The 32-byte value a verifier is compared against in [`verify_digest`]:
    /// the decoded SHA-256 digest for S256, and the SHA-256 of the challenge
    /// for plain (so that both methods compare digests in constant time).
    pub fn digest(&self) -> [u8; 32] {
        match self.method {
            // `new` and `from_verifier` only build canonical 32-byte
            // encodings; a digest no verifier can produce is the safe answer
            // if that ever fails.
            ChallengeMethod::S256 => s256_challenge_digest(&self.value).unwrap_or([0u8; 32]),
            ChallengeMethod::Plain => sha256(self.value.as_bytes()),
        }
    }
}

/// The digest an S256 challenge encodes, or `None` unless it is exactly 43
/// characters of base64url without padding. 43 characters carry 258 bits;
/// the last one must leave the two spare bits zero, or it is not a
/// canonical encoding of 32 bytes.
fn s256_challenge_digest(value: &str) -> Option<[u8; 32]> {
    let chars: &[u8; S256_CHALLENGE_LEN] = value.as_bytes().try_into().ok()?;
    let sextet = |c: u8| match BASE64URL[usize::from(c)] {
        INVALID => None,
        v => Some(u32::from(v)),
    };
    let mut out = [0u8; 32];
    // Ten groups of four characters make 30 bytes; the last three make 2
    // bytes and the two spare bits.
    for (group, bytes) in chars.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let mut word = 0u32;
        for &c in group {
            word = word << 6 | sextet(c)?;
        }
        bytes.copy_from_slice(&word.to_be_bytes()[1..]);
    }
    let [.., a, b, c] = *chars;
    let word = sextet(a)? << 12 | sextet(b)? << 6 | sextet(c)?;
    if word & 0b11 != 0 {
        return None;
    }
    let [_, _, hi, lo] = (word >> 2).to_be_bytes();
    out[30] = hi;
    out[31] = lo;
    Some(out)
}

/// Marks a byte that is not in the base64url alphabet in [`BASE64URL`].
const INVALID: u8 = 0xff;

/// The value of each base64url character (RFC 4648 §5), [`INVALID`] for
/// every other byte.
static BASE64URL: [u8; 256] = {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Checks a received challenge as [`CodeChallenge::new`] does and returns
/// the digest [`CodeChallenge::digest`] would, without copying the value.
pub(crate) fn challenge_digest(
    value: &str,
    method: ChallengeMethod,
) -> Result<[u8; 32], PkceError> {
    match method {
        ChallengeMethod::S256 => s256_challenge_digest(value).ok_or(PkceError::S256Format),
        ChallengeMethod::Plain => {
            check_unreserved(value)?;
            Ok(sha256(value.as_bytes()))
        }
    }
}

impl fmt::Debug for CodeChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeChallenge")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `BASE64URL(SHA256(input))` without padding, with no length or charset
/// checks: the raw transform of RFC 7636 §4.2.
///
/// ```
/// assert_eq!(tower_pkce::s256("helloworld"), "k2oYXKqiZrucvpgengXLeM1zKwsygOuURBK7b4-PB68");
/// ```
pub fn s256(input: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(sha256(input.as_ref()))
}

/// Checks `verifier` against `challenge` (RFC 7636 §4.6), comparing in
/// constant time.
///
/// ```
/// use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, verify};
///
/// let verifier = CodeVerifier::generate();
/// let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
/// assert!(verify(&verifier, &challenge));
/// assert!(!verify(&CodeVerifier::generate(), &challenge));
/// ```
pub fn verify(verifier: &CodeVerifier, challenge: &CodeChallenge) -> bool {
    verify_digest(verifier.secret(), &challenge.digest())
}

/// Checks a raw verifier against a challenge digest (see
/// [`CodeChallenge::digest`]). The verifier must satisfy RFC 7636 §4.1; the
/// comparison is constant-time.
pub fn verify_digest(verifier: &str, digest: &[u8; 32]) -> bool {
    if check_unreserved(verifier).is_err() {
        return false;
    }
    digests_equal(&sha256(verifier.as_bytes()), digest)
}

/// Compares two digests in constant time: the differences of all 32 bytes
/// are folded into one word, which `subtle` then compares without a branch.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u64;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let mut wx = [0u8; 8];
        let mut wy = [0u8; 8];
        wx.copy_from_slice(x);
        wy.copy_from_slice(y);
        diff |= u64::from_ne_bytes(wx) ^ u64::from_ne_bytes(wy);
    }
    bool::from(diff.ct_eq(&0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc7636_appendix_b() {
        assert_eq!(s256(RFC_VERIFIER), RFC_CHALLENGE);
        let v = CodeVerifier::new(RFC_VERIFIER.to_owned()).unwrap();
        let c = CodeChallenge::from_verifier(&v, ChallengeMethod::S256);
        assert_eq!(c.as_str(), RFC_CHALLENGE);
        let parsed = CodeChallenge::new(RFC_CHALLENGE.to_owned(), ChallengeMethod::S256).unwrap();
        assert!(verify(&v, &parsed));
    }

    #[test]
    fn seed_vector_through_raw_helper() {
        assert_eq!(
            s256("helloworld"),
            "k2oYXKqiZrucvpgengXLeM1zKwsygOuURBK7b4-PB68"
        );
        assert_eq!(
            CodeVerifier::new("helloworld".to_owned()).unwrap_err(),
            PkceError::Length
        );
    }

    #[test]
    fn verifier_length_boundaries() {
        for (len, ok) in [
            (0, false),
            (42, false),
            (43, true),
            (128, true),
            (129, false),
        ] {
            assert_eq!(
                CodeVerifier::new("a".repeat(len)).is_ok(),
                ok,
                "length {len}"
            );
        }
    }

    #[test]
    fn verifier_charset() {
        let base = "a".repeat(42);
        for bad in ['+', '/', '=', ' ', '%', 'é', '\0'] {
            assert_eq!(
                CodeVerifier::new(format!("{base}{bad}")).unwrap_err(),
                PkceError::Charset,
                "{bad:?}"
            );
        }
        for good in ['-', '.', '_', '~', 'Z', '9'] {
            assert!(CodeVerifier::new(format!("{base}{good}")).is_ok());
        }
    }

    #[test]
    fn verifier_is_redacted() {
        let v = CodeVerifier::new(RFC_VERIFIER.to_owned()).unwrap();
        let shown = format!("{v:?}");
        assert!(!shown.contains(RFC_VERIFIER));
        assert!(shown.contains("[redacted]"));
        let c = CodeChallenge::from_verifier(&v, ChallengeMethod::S256);
        assert!(!format!("{c:?}").contains(RFC_CHALLENGE));
    }

    #[test]
    fn generated_verifiers_are_valid_and_distinct() {
        let a = CodeVerifier::generate();
        let b = CodeVerifier::generate();
        assert_eq!(a.secret().len(), 43);
        assert!(CodeVerifier::new(a.secret().to_owned()).is_ok());
        assert_ne!(a.secret(), b.secret());
    }

    #[test]
    fn s256_challenge_format() {
        let m = ChallengeMethod::S256;
        assert!(CodeChallenge::new(RFC_CHALLENGE.to_owned(), m).is_ok());
        let short = &RFC_CHALLENGE[..42];
        assert_eq!(
            CodeChallenge::new(short.to_owned(), m).unwrap_err(),
            PkceError::S256Format
        );
        assert_eq!(
            CodeChallenge::new(format!("{RFC_CHALLENGE}A"), m).unwrap_err(),
            PkceError::S256Format
        );
        assert_eq!(
            CodeChallenge::new(format!("{short}="), m).unwrap_err(),
            PkceError::S256Format
        );
        assert_eq!(
            CodeChallenge::new(format!("{short}+"), m).unwrap_err(),
            PkceError::S256Format
        );
        // Non-canonical last character: spare bits set.
        assert_eq!(
            CodeChallenge::new(format!("{short}N"), m).unwrap_err(),
            PkceError::S256Format
        );
    }

    /// The table decoder agrees with the base64 crate's strict decoder on
    /// every last character, every bad byte in every place, and random
    /// digests.
    #[test]
    fn s256_digest_matches_the_reference_decoder() {
        let reference = |value: &str| {
            let mut out = [0u8; 32];
            match URL_SAFE_NO_PAD.decode_slice(value.as_bytes(), &mut out) {
                Ok(32) if value.len() == S256_CHALLENGE_LEN => Some(out),
                _ => None,
            }
        };
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut accepted = 0;
        for last in alphabet.chars() {
            let value = format!("{}{last}", &RFC_CHALLENGE[..42]);
            let ours = s256_challenge_digest(&value);
            assert_eq!(ours, reference(&value), "{value}");
            accepted += usize::from(ours.is_some());
        }
        assert_eq!(accepted, 16, "one last character in four is canonical");
        for at in 0..S256_CHALLENGE_LEN {
            for bad in [b'=', b'+', b'/', b'.', b'~', b' ', 0, 0x80] {
                let mut bytes = RFC_CHALLENGE.as_bytes().to_vec();
                bytes[at] = bad;
                let value = String::from_utf8_lossy(&bytes).into_owned();
                assert_eq!(s256_challenge_digest(&value), None, "{at} {bad}");
            }
        }
        for _ in 0..2000 {
            let verifier = CodeVerifier::generate();
            let challenge = s256(verifier.secret());
            let digest = s256_challenge_digest(&challenge);
            assert_eq!(digest, Some(sha256(verifier.secret().as_bytes())));
            assert_eq!(digest, reference(&challenge));
        }
    }

    #[test]
    fn plain_challenge_rules() {
        let m = ChallengeMethod::Plain;
        assert!(CodeChallenge::new("a".repeat(43), m).is_ok());
        assert!(CodeChallenge::new("a".repeat(128), m).is_ok());
        assert_eq!(
            CodeChallenge::new("a".repeat(42), m).unwrap_err(),
            PkceError::Length
        );
        assert_eq!(
            CodeChallenge::new("a".repeat(129), m).unwrap_err(),
            PkceError::Length
        );
    }

    #[test]
    fn methods() {
        assert_eq!(
            ChallengeMethod::parse("S256").unwrap(),
            ChallengeMethod::S256
        );
        assert_eq!(
            ChallengeMethod::parse("plain").unwrap(),
            ChallengeMethod::Plain
        );
        for bad in ["s256", "S512", "PLAIN", ""] {
            assert_eq!(
                ChallengeMethod::parse(bad).unwrap_err(),
                PkceError::UnknownMethod
            );
        }
    }

    #[test]
    fn verify_rejects_wrong_and_malformed() {
        let c = CodeChallenge::new(RFC_CHALLENGE.to_owned(), ChallengeMethod::S256).unwrap();
        let d = c.digest();
        assert!(verify_digest(RFC_VERIFIER, &d));
        assert!(!verify_digest(&RFC_VERIFIER.replace('d', "e"), &d));
        assert!(!verify_digest("", &d));
        assert!(!verify_digest(&RFC_VERIFIER[..42], &d));
        // The challenge itself is not a verifier for S256.
        assert!(!verify_digest(RFC_CHALLENGE, &d));
    }

    #[test]
    fn digest_comparison_sees_every_byte() {
        let a = [0x5au8; 32];
        assert!(digests_equal(&a, &a));
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!digests_equal(&a, &b), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn plain_verification() {
        let v = CodeVerifier::new("x".repeat(50)).unwrap();
        let c = CodeChallenge::from_verifier(&v, ChallengeMethod::Plain);
        assert_eq!(c.as_str(), v.secret());
        assert!(verify(&v, &c));
        assert!(!verify_digest(&"x".repeat(51), &c.digest()));
    }
}
