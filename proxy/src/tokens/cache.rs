//! The verified-token cache: access tokens whose signature and claims were
//! checked, keyed by the token itself.
//!
//! The key is the whole token (its bytes are stored in the entry), found
//! through a keyed fast hash ([`foldhash`] with a 64-bit key drawn from
//! the OS-seeded RNG for each cache, so per process and per key-ring
//! load). A lookup hashes the presented token and then compares
//! it byte for byte with the stored one, so a different token can never be
//! served another token's claims, whatever the hash says: two tokens with
//! equal hashes are two entries. (It used to be keyed by SHA-256 of the
//! token, which made a hit cost a software SHA-256 of ~300 bytes; a
//! collision-resistant digest is not needed when the full key is
//! compared.) Only tokens that passed the full check are ever inserted, so
//! a client cannot fill the table with keys of its choosing; the random
//! seed keeps collisions unpredictable besides.
//!
//! Bounded: when `capacity` entries are held, the table is cleared before
//! the next insert (the simplest bound that never serves a stale entry;
//! each live token then pays one full check again). At the default 10,000
//! entries and ~300-byte tokens that is about 3.5 MB at most.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use tether_protocol::claims::AccessClaims;

/// A verified token's claims as the cache keeps them.
pub(crate) struct Verified {
    pub(crate) claims: AccessClaims,
    /// The subject as the `X-Tether-Subject` value, made once here so a
    /// hit hands out a reference-counted clone instead of a copy (`None`:
    /// the subject cannot be a header value, and the request path refuses
    /// it as before).
    pub(crate) subject: Option<HeaderValue>,
}

impl Verified {
    pub(crate) fn new(claims: AccessClaims) -> Verified {
        let subject = HeaderValue::from_str(&claims.sub).ok();
        if let Some(v) = &subject {
            // A value built from a copied slice is stored in a plain
            // vector; its first clone moves it to shared storage (one
            // allocation). Made here, so no request on the hot path pays
            // it and every later clone is a reference-count increment.
            drop(v.clone());
        }
        Verified { claims, subject }
    }
}

/// A bounded map of verified access tokens to their (shared) claims. A hit
/// hands out an `Arc` clone: no allocation.
pub(super) struct VerifiedCache<S = foldhash::quality::FixedState> {
    entries: Mutex<HashMap<Box<str>, Arc<Verified>, S>>,
    capacity: usize,
}

impl VerifiedCache {
    /// An empty cache of at most `capacity` entries (at least one), with a
    /// fresh random hash key.
    pub(super) fn new(capacity: usize) -> VerifiedCache {
        let key: u64 = rand::random();
        VerifiedCache::with_hasher(capacity, foldhash::quality::FixedState::with_seed(key))
    }
}

impl<S: BuildHasher> VerifiedCache<S> {
    pub(super) fn with_hasher(capacity: usize, hasher: S) -> VerifiedCache<S> {
        VerifiedCache {
            entries: Mutex::new(HashMap::with_hasher(hasher)),
            capacity: capacity.max(1),
        }
    }

    /// The claims stored for exactly this token.
    pub(super) fn get(&self, token: &str) -> Option<Arc<Verified>> {
        self.lock().get(token).cloned()
    }

    /// Stores a verified token's claims, clearing the table first when it
    /// is full.
    pub(super) fn insert(&self, token: &str, claims: Arc<Verified>) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(token) {
            entries.clear();
        }
        entries.insert(token.into(), claims);
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<Verified>, S>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hasher};

    use super::*;

    /// A hasher under which every key has the same hash: the worst case
    /// for telling tokens apart.
    #[derive(Clone, Default)]
    struct Constant;

    struct ConstantHasher;

    impl Hasher for ConstantHasher {
        fn finish(&self) -> u64 {
            42
        }
        fn write(&mut self, _: &[u8]) {}
    }

    impl BuildHasher for Constant {
        type Hasher = ConstantHasher;
        fn build_hasher(&self) -> ConstantHasher {
            ConstantHasher
        }
    }

    fn claims(sub: &str) -> Arc<Verified> {
        Arc::new(Verified::new(AccessClaims {
            iss: "i".into(),
            aud: "a".into(),
            sub: sub.into(),
            iat: 1,
            nbf: 1,
            exp: 2,
            jti: "j".into(),
            srv: "s".into(),
            rgn: "r".into(),
            home: None,
            fam: "f".into(),
        }))
    }

    #[test]
    fn tokens_with_equal_hashes_never_share_an_entry() {
        let c = VerifiedCache::with_hasher(16, Constant);
        let (a, b) = ("header.payload-a.sig", "header.payload-b.sig");
        assert_eq!(
            Constant.hash_one(a),
            Constant.hash_one(b),
            "the test needs equal hashes"
        );
        c.insert(a, claims("alice"));
        assert!(c.get(b).is_none(), "b must not hit a's entry");
        // A token that is a prefix or extension of a stored one is another
        // token too.
        assert!(c.get("header.payload-a.si").is_none());
        assert!(c.get("header.payload-a.sigX").is_none());
        c.insert(b, claims("bob"));
        assert_eq!(c.get(a).expect("a").claims.sub, "alice");
        assert_eq!(c.get(b).expect("b").claims.sub, "bob");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn the_bound_holds() {
        let c = VerifiedCache::new(3);
        for i in 0..100 {
            c.insert(&format!("token-{i}"), claims("u"));
            assert!(c.len() <= 3, "{} entries after {i}", c.len());
        }
        // The latest insert is always there.
        assert!(c.get("token-99").is_some());
        // Re-inserting a present token at the bound does not clear.
        let c = VerifiedCache::new(2);
        c.insert("x", claims("u"));
        c.insert("y", claims("u"));
        c.insert("y", claims("v"));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("y").expect("y").claims.sub, "v");
    }

    #[test]
    fn two_caches_hash_with_different_keys() {
        let (a, b) = (VerifiedCache::new(1), VerifiedCache::new(1));
        let hash = |c: &VerifiedCache| c.lock().hasher().hash_one("t");
        // Random keys: the same token hashes differently (equal by chance
        // with probability about 2^-64).
        assert_ne!(hash(&a), hash(&b));
    }
}
