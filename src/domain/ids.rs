//! Identifiers: session ids, client keys, and the keyed client hash that is all the store sees.

use std::fmt;

use arrayvec::ArrayString;
use secrecy::{ExposeSecret, SecretString};

/// 80 bits from the OS CSPRNG, as 20 lowercase hex characters. Held inline: ids are copied
/// into every answer and keyed on in the in-memory store, so a heap string per id would cost
/// an allocation per copy and a pointer to follow per comparison.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(ArrayString<20>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a session id is 20 lowercase hexadecimal characters")]
pub struct InvalidSessionId;

impl SessionId {
    pub const BYTES: usize = 10;

    pub fn from_bytes(bytes: [u8; Self::BYTES]) -> Self {
        let mut text = [0u8; 2 * Self::BYTES];
        let encoded = hex::encode_to_slice(bytes, &mut text);
        debug_assert!(encoded.is_ok(), "10 bytes are 20 hex digits");
        Self(ArrayString::from_byte_string(&text).unwrap_or_default())
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidSessionId> {
        let valid = raw.len() == 2 * Self::BYTES
            && raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match ArrayString::from(raw) {
            Ok(id) if valid => Ok(Self(id)),
            _ => Err(InvalidSessionId),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A caller-chosen key for one browser or app installation: 1 to 128 characters of
/// `A-Z a-z 0-9 . _ ~ -`, at least the deployment's minimum length.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidClientKey {
    #[error("a client key is at most {max} characters", max = ClientKey::MAX_LEN)]
    TooLong,
    #[error("a client key is at least {0} characters on this deployment")]
    TooShort(usize),
    #[error("a client key uses only A-Z, a-z, 0-9, '.', '_', '~' and '-'")]
    BadCharacter,
}

impl ClientKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str, min_len: usize) -> Result<Self, InvalidClientKey> {
        if raw.len() > Self::MAX_LEN {
            return Err(InvalidClientKey::TooLong);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        {
            return Err(InvalidClientKey::BadCharacter);
        }
        if raw.len() < min_len.max(1) {
            return Err(InvalidClientKey::TooShort(min_len.max(1)));
        }
        Ok(Self(raw.to_owned()))
    }

    /// 128 random bits as 32 hex characters, for callers that did not bring a key.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Client keys are pseudonymous identifiers: keep them out of debug logs.
impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(..)")
    }
}

/// The keyed hash of a client key: 128 bits as 32 hex characters. The store never sees the
/// raw key. Held inline, as session ids are: it keys every in-memory lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientHash(ArrayString<32>);

impl ClientHash {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Reads a hash back from the store (a session id's pointer): 32 lowercase hex characters.
    pub fn parse_stored(raw: &str) -> Option<Self> {
        let valid = raw.len() == 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ArrayString::from(raw).ok().filter(|_| valid).map(Self)
    }
}

/// Hashes client keys with a key derived from the deployment secret (keyed BLAKE3), so a
/// store dump cannot be joined back to the keys instruments hold.
#[derive(Clone)]
pub struct ClientHasher {
    key: [u8; 32],
}

impl ClientHasher {
    pub fn new(secret: &SecretString) -> Self {
        Self {
            key: blake3::derive_key(
                "sessiond 2026 client key hash",
                secret.expose_secret().as_bytes(),
            ),
        }
    }

    pub fn hash(&self, client: &ClientKey) -> ClientHash {
        let digest = blake3::keyed_hash(&self.key, client.as_str().as_bytes());
        // Into a buffer, as hex::encode collects char by char; every call hashes a client.
        let mut hex = [0u8; 32];
        let encoded = hex::encode_to_slice(&digest.as_bytes()[..16], &mut hex);
        debug_assert!(encoded.is_ok(), "16 bytes are 32 hex digits");
        ClientHash(ArrayString::from_byte_string(&hex).unwrap_or_default())
    }

    /// The provisional session id of a client for one window of time, used while the store
    /// is unreachable: every instance computes the same one, so the instruments of one client
    /// agree during an outage, and outsiders cannot predict it.
    pub fn provisional_id(&self, namespace: &str, client: &ClientHash, window: i64) -> SessionId {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(b"provisional\0");
        hasher.update(namespace.as_bytes());
        hasher.update(b"\0");
        hasher.update(client.as_str().as_bytes());
        hasher.update(&window.to_le_bytes());
        let mut bytes = [0u8; SessionId::BYTES];
        bytes.copy_from_slice(&hasher.finalize().as_bytes()[..SessionId::BYTES]);
        SessionId::from_bytes(bytes)
    }
}

/// Where new identifiers come from. Production draws from the OS CSPRNG; tests inject
/// sequences that force collisions.
pub trait IdSource: Send + Sync + 'static {
    fn session_id(&self) -> SessionId;
    fn client_key(&self) -> ClientKey;
}

/// Identifiers from the operating system's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl OsRandom {
    fn fill<const N: usize>() -> [u8; N] {
        let mut bytes = [0u8; N];
        // The OS CSPRNG failing leaves no safe way to issue ids; stopping is the honest answer.
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        bytes
    }
}

impl IdSource for OsRandom {
    fn session_id(&self) -> SessionId {
        SessionId::from_bytes(Self::fill())
    }

    fn client_key(&self) -> ClientKey {
        ClientKey::from_random(Self::fill())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_20_lowercase_hex_characters() {
        let id = OsRandom.session_id();
        assert_eq!(SessionId::parse(id.as_str()), Ok(id.clone()));
        assert_ne!(OsRandom.session_id(), id);
    }

    #[test]
    fn session_id_parse_rejects_uppercase_and_wrong_lengths() {
        for bad in [
            "",
            "0123456789ABCDEF0123",
            "0123456789abcdef012",
            "0123456789abcdef01234",
        ] {
            assert_eq!(SessionId::parse(bad), Err(InvalidSessionId), "{bad}");
        }
    }

    #[test]
    fn client_keys_allow_the_unreserved_uri_characters() {
        assert!(ClientKey::parse("Ab0.~_-", 1).is_ok());
        assert_eq!(
            ClientKey::parse("a b", 1),
            Err(InvalidClientKey::BadCharacter)
        );
        assert_eq!(
            ClientKey::parse("é", 1),
            Err(InvalidClientKey::BadCharacter)
        );
        assert_eq!(
            ClientKey::parse(&"a".repeat(129), 1),
            Err(InvalidClientKey::TooLong)
        );
        assert_eq!(ClientKey::parse("", 1), Err(InvalidClientKey::TooShort(1)));
    }

    #[test]
    fn a_deployment_minimum_length_is_enforced() {
        assert_eq!(
            ClientKey::parse("abc", 16),
            Err(InvalidClientKey::TooShort(16))
        );
        assert!(ClientKey::parse(&"a".repeat(16), 16).is_ok());
    }

    #[test]
    fn minted_client_keys_are_valid_client_keys() {
        let key = OsRandom.client_key();
        assert_eq!(key.as_str().len(), 32);
        assert!(ClientKey::parse(key.as_str(), 32).is_ok());
    }

    #[test]
    fn provisional_ids_are_shared_within_a_window_and_differ_across_windows_and_clients() {
        let hasher = ClientHasher::new(&SecretString::from("one"));
        let a = hasher.hash(&ClientKey::parse("a", 1).unwrap());
        let b = hasher.hash(&ClientKey::parse("b", 1).unwrap());
        let id = hasher.provisional_id("web", &a, 7);
        assert_eq!(SessionId::parse(id.as_str()), Ok(id.clone()));
        assert_eq!(hasher.provisional_id("web", &a, 7), id);
        assert_ne!(hasher.provisional_id("web", &a, 8), id);
        assert_ne!(hasher.provisional_id("web", &b, 7), id);
        assert_ne!(hasher.provisional_id("ios", &a, 7), id);
    }

    #[test]
    fn client_hash_depends_on_the_secret_and_hides_the_key() {
        let key = ClientKey::parse("browser-1", 1).unwrap();
        let a = ClientHasher::new(&SecretString::from("one")).hash(&key);
        let b = ClientHasher::new(&SecretString::from("two")).hash(&key);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(!a.as_str().contains("browser"));
        assert_eq!(a, ClientHasher::new(&SecretString::from("one")).hash(&key));
    }
}
