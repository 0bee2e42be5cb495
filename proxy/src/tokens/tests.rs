use super::keyring::ED25519_PKCS8_PREFIX;
use super::*;
use jsonwebtoken::{EncodingKey, Header};
use tether_protocol::claims::AccessClaims;
use tether_protocol::typ;
use tether_protocol::validate::MAX_TOKEN_LEN;

const SECRET_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn ring(extra: &str) -> KeyRing {
    KeyRing::parse(
        &format!("signing_kid = \"k1\"\n[[keys]]\nkid = \"k1\"\nalg = \"HS256\"\nsecret_hex = \"{SECRET_HEX}\"\n{extra}"),
        "test",
    )
    .unwrap()
}

fn cfg(ring: KeyRing) -> TokenConfig {
    TokenConfig {
        issuer: "tether".into(),
        audience: "app".into(),
        access_ttl: Duration::from_secs(120),
        refresh_ttl: Duration::from_secs(14 * 86400),
        leeway: Duration::from_secs(5),
        keyring_path: "test".into(),
        keyring: ring,
        refresh_rotation: true,
        when_discovery_down: crate::tokens::DownPolicy::FailClosed,
        max_extend: std::time::Duration::from_secs(21_600),
        verified_cache_entries: 100,
    }
}

fn tokens() -> Tokens {
    Tokens::new(&cfg(ring("")))
}

fn target() -> LockTarget<'static> {
    LockTarget {
        server_id: "eu-1",
        region: "eu",
    }
}

/// Signs arbitrary claims with an arbitrary header, for hostile cases.
fn forge(header: &Header, claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn secret() -> Vec<u8> {
    decode_hex(SECRET_HEX).unwrap()
}

fn access_header() -> Header {
    let mut h = Header::new(Algorithm::HS256);
    h.typ = Some("at+jwt".into());
    h.kid = Some("k1".into());
    h
}

fn claims(now: u64) -> serde_json::Value {
    serde_json::json!({
        "iss": "tether", "aud": "app", "sub": "alice", "iat": now, "nbf": now,
        "exp": now + 100, "jti": "j", "srv": "eu-1", "rgn": "eu", "fam": "f"
    })
}

#[test]
fn mint_and_verify_round_trip() {
    let t = tokens();
    let m = t.mint("alice", target(), Some("us"), None).unwrap();
    let a = t.verify_access(&m.access).unwrap();
    assert_eq!(
        (a.sub.as_str(), a.srv.as_str(), a.rgn.as_str()),
        ("alice", "eu-1", "eu")
    );
    assert_eq!(a.home.as_deref(), Some("us"));
    assert_eq!(a.exp - a.iat, 120);
    let r = t.verify_refresh(&m.refresh).unwrap();
    assert_eq!(r.fam, a.fam);
    assert_eq!(r.fam, m.family);
    assert_eq!(r.exp - r.iat, 14 * 86400);
    // A refresh keeps the family.
    let m2 = t.mint("alice", target(), None, Some(&m.family)).unwrap();
    assert_eq!(t.verify_refresh(&m2.refresh).unwrap().fam, m.family);
}

#[test]
fn access_and_refresh_never_pass_for_each_other() {
    let t = tokens();
    let m = t.mint("alice", target(), None, None).unwrap();
    assert_eq!(t.verify_access(&m.refresh), Err(TokenError::WrongType));
    assert_eq!(t.verify_refresh(&m.access), Err(TokenError::WrongType));
}

#[test]
fn hostile_tokens_are_refused() {
    let t = tokens();
    let now = unix_now();
    let good = forge(&access_header(), &claims(now), &secret());
    assert!(t.verify_access(&good).is_ok());

    let cases: Vec<(&str, String, TokenError)> = vec![
        ("garbage", "garbage".into(), TokenError::Malformed),
        ("two segments", "a.b".into(), TokenError::Malformed),
        ("four segments", format!("{good}.x"), TokenError::Malformed),
        ("empty", String::new(), TokenError::Malformed),
        ("huge", "a".repeat(MAX_TOKEN_LEN + 1), TokenError::TooLarge),
        (
            "wrong key",
            forge(&access_header(), &claims(now), &[7u8; 32]),
            TokenError::BadSignature,
        ),
        (
            "unknown kid",
            {
                let mut h = access_header();
                h.kid = Some("k9".into());
                forge(&h, &claims(now), &secret())
            },
            TokenError::UnknownKey,
        ),
        (
            "no kid",
            {
                let mut h = access_header();
                h.kid = None;
                forge(&h, &claims(now), &secret())
            },
            TokenError::UnknownKey,
        ),
        (
            "kid traversal",
            {
                let mut h = access_header();
                h.kid = Some("../../etc/passwd".into());
                forge(&h, &claims(now), &secret())
            },
            TokenError::UnknownKey,
        ),
        (
            "no typ",
            {
                let mut h = access_header();
                h.typ = None;
                forge(&h, &claims(now), &secret())
            },
            TokenError::WrongType,
        ),
        (
            "HS384 on an HS256 key",
            {
                let mut h = access_header();
                h.alg = Algorithm::HS384;
                forge(&h, &claims(now), &secret())
            },
            TokenError::AlgorithmNotAllowed,
        ),
        (
            "expired beyond leeway",
            {
                let mut c = claims(now);
                c["exp"] = (now - 60).into();
                forge(&access_header(), &c, &secret())
            },
            TokenError::Expired,
        ),
        (
            "future nbf",
            {
                let mut c = claims(now);
                c["nbf"] = (now + 60).into();
                forge(&access_header(), &c, &secret())
            },
            TokenError::NotYetValid,
        ),
        (
            "wrong iss",
            {
                let mut c = claims(now);
                c["iss"] = "evil".into();
                forge(&access_header(), &c, &secret())
            },
            TokenError::WrongIssuer,
        ),
        (
            "wrong aud",
            {
                let mut c = claims(now);
                c["aud"] = "other".into();
                forge(&access_header(), &c, &secret())
            },
            TokenError::WrongAudience,
        ),
        (
            "missing srv",
            {
                let mut c = claims(now);
                c.as_object_mut().unwrap().remove("srv");
                forge(&access_header(), &c, &secret())
            },
            TokenError::BadClaims,
        ),
        (
            "missing nbf",
            {
                let mut c = claims(now);
                c.as_object_mut().unwrap().remove("nbf");
                forge(&access_header(), &c, &secret())
            },
            TokenError::BadClaims,
        ),
        (
            "string exp",
            {
                let mut c = claims(now);
                c["exp"] = (now + 100).to_string().into();
                forge(&access_header(), &c, &secret())
            },
            TokenError::BadClaims,
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(t.verify_access(&token), Err(want), "case {name}");
        // The request path (through the verified-token cache) agrees.
        assert_eq!(
            t.with_access(&token, |_| ()),
            Err(want),
            "case {name}, request path"
        );
    }
    assert_eq!(t.cached_tokens(), 0, "no hostile token was cached");
}

#[test]
fn alg_none_is_refused() {
    let t = tokens();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#);
    let body = b64.encode(claims(unix_now()).to_string());
    for token in [format!("{header}.{body}."), format!("{header}.{body}.AAAA")] {
        assert!(t.verify_access(&token).is_err(), "{token}");
    }
}

#[test]
fn leeway_is_applied() {
    let t = tokens();
    let now = unix_now();
    let mut c = claims(now);
    c["exp"] = (now - 2).into(); // within the 5 s leeway
    assert!(t
        .verify_access(&forge(&access_header(), &c, &secret()))
        .is_ok());
}

#[test]
fn rotation_verifies_old_and_new_keys() {
    let old = tokens();
    let m = old.mint("alice", target(), None, None).unwrap();
    let rotated = KeyRing::parse(
        &format!(
            "signing_kid = \"k2\"\n[[keys]]\nkid = \"k1\"\nalg = \"HS256\"\nsecret_hex = \"{SECRET_HEX}\"\n\
             [[keys]]\nkid = \"k2\"\nalg = \"HS256\"\nsecret_hex = \"{}\"\n",
            "ab".repeat(32)
        ),
        "test",
    )
    .unwrap();
    let new = Tokens::new(&cfg(rotated));
    assert!(
        new.verify_access(&m.access).is_ok(),
        "old tokens stay valid"
    );
    let m2 = new.mint("alice", target(), None, None).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&m2.access)
            .unwrap()
            .kid
            .as_deref(),
        Some("k2")
    );
    assert_eq!(old.verify_access(&m2.access), Err(TokenError::UnknownKey));
}

#[test]
fn key_ring_errors_name_the_problem() {
    let short = KeyRing::parse(
        "signing_kid = \"k\"\n[[keys]]\nkid = \"k\"\nalg = \"HS256\"\nsecret_hex = \"abcd\"\n",
        "f",
    );
    assert!(short.unwrap_err().to_string().contains("at least 32"));
    let alg = KeyRing::parse(
        &format!("signing_kid = \"k\"\n[[keys]]\nkid = \"k\"\nalg = \"none\"\nsecret_hex = \"{SECRET_HEX}\"\n"),
        "f",
    );
    assert!(alg.unwrap_err().to_string().contains("not allowed"));
    let missing = KeyRing::parse(
        &format!("signing_kid = \"zz\"\n[[keys]]\nkid = \"k\"\nalg = \"HS256\"\nsecret_hex = \"{SECRET_HEX}\"\n"),
        "f",
    );
    assert!(matches!(missing, Err(KeyRingError::NoSigningKey { .. })));
}

/// The fast path (`fast_access`) only ever accepts what the general
/// `jsonwebtoken` path accepts, with the same claims; it declines the rest.
#[test]
fn fast_path_agrees_with_the_general_path() {
    let t = tokens();
    let now = unix_now();
    let slow = |token: &str| t.verify::<AccessClaims>(token, typ::ACCESS, &t.access_validation);
    let m = t.mint("alice", target(), Some("us"), None).unwrap();
    let good = forge(&access_header(), &claims(now), &secret());
    for token in [&m.access, &good] {
        let fast = t
            .fast_access_with(token, now, &mut |c| c.owned())
            .expect("fast path takes a plain valid token");
        assert_eq!(Ok(fast), slow(token));
    }

    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let mut declined: Vec<(&str, String)> = vec![
        (
            "bad signature",
            format!("{h}.{p}.{}", b64("x".repeat(32).as_str())),
        ),
        ("short signature", format!("{h}.{p}.AAAA")),
        ("four segments", format!("{good}.x")),
        ("padded header", format!("{h}=.{p}.{s}")),
        ("refresh token", m.refresh.clone()),
        (
            "escaped string",
            forge(
                &access_header(),
                &{
                    let mut c = claims(now);
                    c["sub"] = "al\"ice".into();
                    c
                },
                &secret(),
            ),
        ),
        ("extra header field", {
            let mut hd = access_header();
            hd.cty = Some("x".into());
            forge(&hd, &claims(now), &secret())
        }),
        (
            "aud array",
            forge(
                &access_header(),
                &{
                    let mut c = claims(now);
                    c["aud"] = serde_json::json!(["app"]);
                    c
                },
                &secret(),
            ),
        ),
        (
            "home null",
            forge(
                &access_header(),
                &{
                    let mut c = claims(now);
                    c["home"] = serde_json::Value::Null;
                    c
                },
                &secret(),
            ),
        ),
    ];
    for (field, value) in [("exp", now - 60), ("nbf", now + 60)] {
        let mut c = claims(now);
        c[field] = value.into();
        declined.push((field, forge(&access_header(), &c, &secret())));
    }
    for (field, value) in [("iss", "evil"), ("aud", "other")] {
        let mut c = claims(now);
        c[field] = value.into();
        declined.push((field, forge(&access_header(), &c, &secret())));
    }
    for (name, token) in &declined {
        // Declining a valid token is allowed (the general path takes it);
        // accepting one the general path refuses is not.
        if let Some(fast) = t.fast_access_with(token, now, &mut |c| c.owned()) {
            assert_eq!(Ok(fast), slow(token), "case {name}");
        }
    }
    // Within the leeway both accept.
    let mut c = claims(now);
    c["exp"] = (now - 2).into();
    let token = forge(&access_header(), &c, &secret());
    assert_eq!(
        Ok(t.fast_access_with(&token, now, &mut |c| c.owned()).unwrap()),
        slow(&token)
    );
}

const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn eddsa_ring() -> KeyRing {
    KeyRing::parse(
        &format!(
            "signing_kid = \"ed1\"\n[[keys]]\nkid = \"ed1\"\nalg = \"EdDSA\"\nprivate_key_hex = \"{SEED_HEX}\"\n\
             [[keys]]\nkid = \"k1\"\nalg = \"HS256\"\nsecret_hex = \"{SECRET_HEX}\"\n"
        ),
        "test",
    )
    .unwrap()
}

#[test]
fn eddsa_mint_verify_and_cache() {
    let t = Tokens::new(&cfg(eddsa_ring()));
    let m = t.mint("alice", target(), None, None).unwrap();
    let h = jsonwebtoken::decode_header(&m.access).unwrap();
    assert_eq!((h.alg, h.kid.as_deref()), (Algorithm::EdDSA, Some("ed1")));
    assert_eq!(t.cached_tokens(), 0);
    let first = t.verify_access(&m.access).unwrap();
    assert_eq!(t.cached_tokens(), 1);
    let second = t.verify_access(&m.access).unwrap();
    assert_eq!(first, second);
    assert_eq!(t.cached_tokens(), 1, "the second check was a cache hit");
    assert!(t.verify_refresh(&m.refresh).is_ok());
    // A tampered token misses the cache and fails the signature.
    let mut bad = m.access.clone();
    bad.pop();
    bad.push(if m.access.ends_with('A') { 'B' } else { 'A' });
    assert!(t.verify_access(&bad).is_err());
    // HS256 tokens of the same ring still verify.
    let hs = forge(&access_header(), &claims(unix_now()), &secret());
    assert!(t.verify_access(&hs).is_ok());
}

#[test]
fn cached_tokens_are_still_checked_for_expiry() {
    let mut c = cfg(eddsa_ring());
    c.leeway = Duration::from_secs(0);
    let t = Tokens::new(&c);
    // Sign an EdDSA token that expires in one second.
    let now = unix_now();
    let mut claims = claims(now);
    claims["exp"] = (now + 1).into();
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some("ed1".into());
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&decode_hex(SEED_HEX).unwrap());
    let token = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(&der)).unwrap();
    assert!(t.verify_access(&token).is_ok());
    assert_eq!(t.cached_tokens(), 1);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        t.verify_access(&token),
        Err(TokenError::Expired),
        "a cache hit re-checks exp"
    );
}

#[test]
fn hs_eddsa_key_confusion_is_refused() {
    let t = Tokens::new(&cfg(eddsa_ring()));
    let public =
        ed25519_dalek::SigningKey::from_bytes(&decode_hex(SEED_HEX).unwrap().try_into().unwrap())
            .verifying_key()
            .to_bytes();
    // An HS256 token "signed" with the Ed25519 public key, naming the Ed key.
    let mut h = access_header();
    h.kid = Some("ed1".into());
    let token = forge(&h, &claims(unix_now()), &public);
    assert_eq!(
        t.verify_access(&token),
        Err(TokenError::AlgorithmNotAllowed)
    );
    // And the reverse: an EdDSA header on the HS256 key.
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&decode_hex(SEED_HEX).unwrap());
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some("k1".into());
    let token =
        jsonwebtoken::encode(&h, &claims(unix_now()), &EncodingKey::from_ed_der(&der)).unwrap();
    assert_eq!(
        t.verify_access(&token),
        Err(TokenError::AlgorithmNotAllowed)
    );
}

#[test]
fn jwks_lists_only_public_ed25519_keys() {
    let ring = eddsa_ring();
    let v: serde_json::Value = serde_json::from_str(&ring.jwks_json()).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], "ed1");
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert!(
        !ring.jwks_json().contains(SECRET_HEX),
        "no HS256 secret is published"
    );
    // A verify-only ring (public key alone) verifies but cannot sign.
    let public = keys[0]["x"].as_str().unwrap();
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(public)
        .unwrap();
    let verify_only = KeyRing::parse(
        &format!(
            "signing_kid = \"k1\"\n[[keys]]\nkid = \"ed1\"\nalg = \"EdDSA\"\npublic_key_hex = \"{}\"\n\
             [[keys]]\nkid = \"k1\"\nalg = \"HS256\"\nsecret_hex = \"{SECRET_HEX}\"\n",
            hex(&x)
        ),
        "test",
    )
    .unwrap();
    let signer = Tokens::new(&cfg(eddsa_ring()));
    let m = signer.mint("alice", target(), None, None).unwrap();
    assert!(Tokens::new(&cfg(verify_only))
        .verify_access(&m.access)
        .is_ok());
    let no_private = KeyRing::parse(
        &format!("signing_kid = \"ed1\"\n[[keys]]\nkid = \"ed1\"\nalg = \"EdDSA\"\npublic_key_hex = \"{}\"\n", hex(&x)),
        "test",
    );
    assert!(no_private
        .unwrap_err()
        .to_string()
        .contains("needs its private key"));
    let mismatch = KeyRing::parse(
        &format!(
            "signing_kid = \"ed1\"\n[[keys]]\nkid = \"ed1\"\nalg = \"EdDSA\"\nprivate_key_hex = \"{SEED_HEX}\"\npublic_key_hex = \"{}\"\n",
            "11".repeat(32)
        ),
        "test",
    );
    assert!(mismatch.is_err());
}

#[test]
fn hs256_request_path_goes_through_the_cache() {
    let mut c = cfg(ring(""));
    c.leeway = Duration::from_secs(0);
    let t = Tokens::new(&c);
    let now = unix_now();
    let good = forge(&access_header(), &claims(now), &secret());
    let srv = |token: &str| t.with_access(token, |v| v.srv.to_owned());
    assert_eq!(t.cached_tokens(), 0);
    assert_eq!(srv(&good), Ok("eu-1".to_owned()));
    assert_eq!(t.cached_tokens(), 1, "the first check filled the cache");
    assert_eq!(srv(&good), Ok("eu-1".to_owned()));
    assert_eq!(t.cached_tokens(), 1, "the second check was a hit");

    // A token that differs in one byte misses and fails the signature;
    // nothing is cached for it.
    let mut bad = good.clone();
    bad.pop();
    bad.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(srv(&bad), Err(TokenError::BadSignature));
    // Another secret's token with the same claims: a miss, refused.
    let forged = forge(&access_header(), &claims(now), &[7u8; 32]);
    assert_eq!(srv(&forged), Err(TokenError::BadSignature));
    assert_eq!(t.cached_tokens(), 1);

    // A cached token is still checked for expiry on every hit.
    let mut short = claims(now);
    short["exp"] = (now + 1).into();
    let short = forge(&access_header(), &short, &secret());
    assert!(srv(&short).is_ok());
    assert_eq!(t.cached_tokens(), 2);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(srv(&short), Err(TokenError::Expired));

    // With the cache off, the same answers (the fast path).
    let mut off = cfg(ring(""));
    off.verified_cache_entries = 0;
    let u = Tokens::new(&off);
    assert_eq!(
        u.with_access(&good, |v| v.srv.to_owned()),
        Ok("eu-1".to_owned())
    );
    assert_eq!(u.with_access(&bad, |_| ()), Err(TokenError::BadSignature));
    assert_eq!(u.cached_tokens(), 0);
}

#[test]
fn a_cache_hit_shares_the_subject_value_instead_of_copying_it() {
    let t = Tokens::new(&cfg(ring("")));
    let now = unix_now();
    let good = forge(&access_header(), &claims(now), &secret());
    // The subject's header value as the request path gets it: the bytes'
    // address tells a shared value from a fresh copy.
    let subject = |t: &Tokens| {
        t.with_access(&good, |v| v.subject.cloned())
            .expect("valid token")
            .expect("a header-safe subject comes with its value")
    };
    let first = subject(&t);
    let second = subject(&t);
    assert_eq!(first, claims(now)["sub"].as_str().unwrap());
    assert_eq!(
        first.as_bytes().as_ptr(),
        second.as_bytes().as_ptr(),
        "a hit hands out the cached value, not a copy"
    );

    // A subject that cannot be a header value gets none, and the request
    // path still refuses it (lock::locate makes the same check).
    let mut bad = claims(now);
    bad["sub"] = "bad\nsubject".into();
    let bad = forge(&access_header(), &bad, &secret());
    assert_eq!(t.with_access(&bad, |v| v.subject.is_none()), Ok(true));

    // With the cache off there is nothing to share: the value is made
    // per request, from `sub`.
    let mut off = cfg(ring(""));
    off.verified_cache_entries = 0;
    let u = Tokens::new(&off);
    assert_eq!(u.with_access(&good, |v| v.subject.is_none()), Ok(true));
}
