//! The corpus class: Tokens and `Authorization` headers at a proxy: 401 + `WWW-Authenticate`
//! (a well-formed unknown `srv` is the one 503), nothing reaches the app.

use super::*;

pub(super) struct TokenCase {
    name: &'static str,
    token: String,
    /// Statuses the contract allows; the first is today's.
    want: &'static [u16],
}

pub(super) const U401: &[u16] = &[401];

pub(super) fn token_cases(f: &Forge, refresh_token: &str, access_token: &str) -> Vec<TokenCase> {
    let c = |name, token| TokenCase {
        name,
        token,
        want: U401,
    };
    let claims = f.access_claims(|_| {});
    let claims_text = claims.to_string();
    let now = f.now;
    let none = |sig: &str| {
        format!(
            "{}.{}.{sig}",
            b64(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
            b64(claims_text.as_bytes())
        )
    };
    let good = f.access(|_| {});
    let (gh, gp, gs) = {
        let mut it = good.split('.');
        (
            it.next().unwrap().to_owned(),
            it.next().unwrap().to_owned(),
            it.next().unwrap().to_owned(),
        )
    };
    let ed = ed_signing_key();
    let mut cases = vec![
        // Algorithm attacks.
        c("alg none, empty signature", none("")),
        c("alg none, with a signature", none(&gs)),
        c("alg NoNe (case games)", {
            format!(
                "{}.{gp}.",
                b64(br#"{"alg":"NoNe","typ":"at+jwt","kid":"k1"}"#)
            )
        }),
        c(
            "HS384 on the HS256 key",
            f.sign_alg(
                &f.header(|h| h["alg"] = "HS384".into()),
                &claims,
                Algorithm::HS384,
            ),
        ),
        c(
            "HS512 on the HS256 key",
            f.sign_alg(
                &f.header(|h| h["alg"] = "HS512".into()),
                &claims,
                Algorithm::HS512,
            ),
        ),
        c(
            "EdDSA-signed token, kid of the HS key",
            signed_raw(
                f.header(|h| h["alg"] = "EdDSA".into())
                    .to_string()
                    .as_bytes(),
                claims_text.as_bytes(),
                &ed,
                Algorithm::EdDSA,
            ),
        ),
        c(
            "EdDSA-signed token, kid unknown",
            signed_raw(
                f.header(|h| {
                    h["alg"] = "EdDSA".into();
                    h["kid"] = "ed9".into();
                })
                .to_string()
                .as_bytes(),
                claims_text.as_bytes(),
                &ed,
                Algorithm::EdDSA,
            ),
        ),
        c(
            "key confusion: HS256 keyed with the raw Ed25519 public key",
            {
                signed_raw(
                    f.header(|_| {}).to_string().as_bytes(),
                    claims_text.as_bytes(),
                    &EncodingKey::from_secret(&ED_PUBLIC),
                    Algorithm::HS256,
                )
            },
        ),
        c("key confusion: HS256 keyed with the public key PEM", {
            signed_raw(
                f.header(|_| {}).to_string().as_bytes(),
                claims_text.as_bytes(),
                &EncodingKey::from_secret(ed_public_pem().as_bytes()),
                Algorithm::HS256,
            )
        }),
        c(
            "key confusion: HS256 under kid ed1 keyed with the raw public key",
            {
                let h = f.header(|h| h["kid"] = "ed1".into());
                signed_raw(
                    h.to_string().as_bytes(),
                    claims_text.as_bytes(),
                    &EncodingKey::from_secret(&ED_PUBLIC),
                    Algorithm::HS256,
                )
            },
        ),
        c(
            "key confusion: HS256 under kid ed1 keyed with the public key PEM",
            {
                let h = f.header(|h| h["kid"] = "ed1".into());
                signed_raw(
                    h.to_string().as_bytes(),
                    claims_text.as_bytes(),
                    &EncodingKey::from_secret(ed_public_pem().as_bytes()),
                    Algorithm::HS256,
                )
            },
        ),
        c(
            "key confusion: HS256 under kid ed1 keyed with the JWK x value",
            {
                let h = f.header(|h| h["kid"] = "ed1".into());
                signed_raw(
                    h.to_string().as_bytes(),
                    claims_text.as_bytes(),
                    &EncodingKey::from_secret(b64(&ED_PUBLIC).as_bytes()),
                    Algorithm::HS256,
                )
            },
        ),
        c("EdDSA header under kid ed1 with an HMAC signature", {
            let h = f.header(|h| {
                h["alg"] = "EdDSA".into();
                h["kid"] = "ed1".into();
            });
            signed_raw(
                h.to_string().as_bytes(),
                claims_text.as_bytes(),
                &EncodingKey::from_secret(&ED_PUBLIC),
                Algorithm::HS256,
            )
        }),
        c(
            "key confusion: HS256 keyed with the PEM, header claims EdDSA",
            {
                signed_raw(
                    f.header(|h| h["alg"] = "EdDSA".into())
                        .to_string()
                        .as_bytes(),
                    claims_text.as_bytes(),
                    &EncodingKey::from_secret(ed_public_pem().as_bytes()),
                    Algorithm::HS256,
                )
            },
        ),
        c("embedded jwk header (attacker's own key)", {
            let h = f.header(|h| {
                h["jwk"] = json!({"kty": "oct", "k": b64(b"attacker-secret-attacker-secret!")})
            });
            signed_raw(
                h.to_string().as_bytes(),
                claims_text.as_bytes(),
                &EncodingKey::from_secret(b"attacker-secret-attacker-secret!"),
                Algorithm::HS256,
            )
        }),
        c(
            "wrong key (another cluster's)",
            signed_raw(
                f.header(|_| {}).to_string().as_bytes(),
                claims_text.as_bytes(),
                &EncodingKey::from_secret(&[9u8; 32]),
                Algorithm::HS256,
            ),
        ),
        // Key ids.
        c(
            "kid traversal ../../etc/passwd",
            f.sign(&f.header(|h| h["kid"] = "../../etc/passwd".into()), &claims),
        ),
        c(
            "unknown kid",
            f.sign(&f.header(|h| h["kid"] = "k2".into()), &claims),
        ),
        c(
            "kid K1 (case)",
            f.sign(&f.header(|h| h["kid"] = "K1".into()), &claims),
        ),
        c(
            "missing kid",
            f.sign(&f.header(|h| remove(h, "kid")), &claims),
        ),
        c(
            "kid with a NUL",
            f.sign(&f.header(|h| h["kid"] = "k1\u{0}".into()), &claims),
        ),
        c(
            "kid as a number",
            f.sign(&f.header(|h| h["kid"] = 1.into()), &claims),
        ),
        // Shape.
        c("two segments", format!("{gh}.{gp}")),
        c("four segments", format!("{good}.{gs}")),
        c("empty segments", "..".into()),
        c("empty signature", format!("{gh}.{gp}.")),
        c("non-base64 header", format!("!!!.{gp}.{gs}")),
        c("non-base64 signature", format!("{gh}.{gp}.***")),
        c("padded base64 segments", format!("{gh}==.{gp}.{gs}")),
        c(
            "header not JSON",
            signed_raw(
                b"not json",
                claims_text.as_bytes(),
                &f.key,
                Algorithm::HS256,
            ),
        ),
        c(
            "payload not JSON",
            signed_raw(
                f.header(|_| {}).to_string().as_bytes(),
                b"not json",
                &f.key,
                Algorithm::HS256,
            ),
        ),
        c(
            "payload a JSON array",
            signed_raw(
                f.header(|_| {}).to_string().as_bytes(),
                b"[1,2,3]",
                &f.key,
                Algorithm::HS256,
            ),
        ),
        c(
            "JWS JSON serialization",
            json!({"payload": gp, "protected": gh, "signature": gs}).to_string(),
        ),
        // Claim types.
        c(
            "string exp",
            f.access(|v| v["exp"] = (now + 100).to_string().into()),
        ),
        c(
            "string nbf",
            f.access(|v| v["nbf"] = now.to_string().into()),
        ),
        c(
            "float exp",
            f.access(|v| v["exp"] = json!(now as f64 + 100.5)),
        ),
        c("negative exp", f.access(|v| v["exp"] = json!(-1))),
        c("exp beyond u64", f.access(|v| v["exp"] = json!(1e20))),
        c("null exp", f.access(|v| v["exp"] = Value::Null)),
        c(
            "aud as an array of wrong values",
            f.access(|v| v["aud"] = json!(["a", "b"])),
        ),
        c(
            "sub as an object",
            f.access(|v| v["sub"] = json!({"id": "alice"})),
        ),
    ];
    for claim in [
        "iss", "aud", "exp", "nbf", "sub", "srv", "fam", "iat", "jti", "rgn",
    ] {
        let name: &'static str = Box::leak(format!("missing claim {claim}").into_boxed_str());
        cases.push(c(name, f.access(|v| remove(v, claim))));
    }
    cases.extend([
        // Token type.
        c(
            "typ rt+jwt with access claims",
            f.sign(&f.header(|h| h["typ"] = "rt+jwt".into()), &claims),
        ),
        c(
            "missing typ",
            f.sign(&f.header(|h| remove(h, "typ")), &claims),
        ),
        c(
            "typ JWT",
            f.sign(&f.header(|h| h["typ"] = "JWT".into()), &claims),
        ),
        c("real refresh token as access", refresh_token.to_owned()),
        c(
            "forged refresh token as access",
            f.sign(
                &f.header(|h| h["typ"] = "rt+jwt".into()),
                &f.refresh_claims(|_| {}),
            ),
        ),
        // Time and identity.
        c("future nbf", f.access(|v| v["nbf"] = (now + 60).into())),
        c(
            "expired beyond leeway",
            f.access(|v| v["exp"] = (now - 30).into()),
        ),
        c("exp far in the past", f.access(|v| v["exp"] = 1.into())),
        c("wrong iss", f.access(|v| v["iss"] = "evil".into())),
        c("wrong aud", f.access(|v| v["aud"] = "other".into())),
        // Forged lock.
        c(
            "URL-shaped srv",
            f.access(|v| v["srv"] = "http://127.0.0.1:9/".into()),
        ),
        c(
            "srv with a slash",
            f.access(|v| v["srv"] = "eu-1/../x".into()),
        ),
        c(
            "srv with CRLF",
            f.access(|v| v["srv"] = "eu-1\r\nX-Injected: 1".into()),
        ),
        c("empty srv", f.access(|v| v["srv"] = "".into())),
        c(
            "srv of 200 characters",
            f.access(|v| v["srv"] = "s".repeat(200).into()),
        ),
        c("access token with its signature from another token", {
            let other = f.access(|v| v["sub"] = "mallory".into());
            format!("{}.{}", other.rsplit_once('.').unwrap().0, gs)
        }),
        c(
            "valid token with a trailing dot",
            format!("{access_token}."),
        ),
        TokenCase {
            name: "16 KiB token",
            token: f.access(|v| v["pad"] = "x".repeat(16 * 1024).into()),
            // 401 from the token's length check, or 431 once request-header
            // limits (issue 6 item 4) refuse it before that.
            want: &[401, 431],
        },
        TokenCase {
            name: "well-formed unknown srv",
            token: f.access(|v| v["srv"] = "zz-9".into()),
            want: &[503],
        },
    ]);
    cases
}

/// One `Authorization` header (or several, or none) on an application path.
pub(super) struct AuthCase {
    name: &'static str,
    headers: Vec<String>,
    query: &'static str,
    /// Whether a correct 200 (forwarded with the verified identity) is an
    /// acceptable answer besides a 4xx.
    may_forward: bool,
}

pub(super) async fn tokens_at_a_proxy() -> usize {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let trap = Upstream::start("trap").await;
    // The ring also holds an EdDSA verifying key `ed1` (RFC 8032 test key),
    // so the key-confusion cases aim at a real EdDSA kid.
    let ring = std::fs::read_to_string(c.path("keyring.toml")).expect("key ring");
    let ed_hex: String = ED_PUBLIC.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        c.path("keyring.toml"),
        format!(
            "{ring}\n[[keys]]\nkid = \"ed1\"\nalg = \"EdDSA\"\npublic_key_hex = \"{ed_hex}\"\n"
        ),
    )
    .expect("write key ring");
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let f = Forge {
        key: EncodingKey::from_secret(&ring_secret(&c)),
        now: tether_proxy::tokens::unix_now(),
    };
    // The forging helpers make tokens the proxy accepts, HS256 and EdDSA.
    let good = f.access(|_| {});
    let good_ed = signed_raw(
        f.header(|h| {
            h["alg"] = "EdDSA".into();
            h["kid"] = "ed1".into();
        })
        .to_string()
        .as_bytes(),
        f.access_claims(|_| {}).to_string().as_bytes(),
        &ed_signing_key(),
        Algorithm::EdDSA,
    );
    for (name, t) in [("HS256", &good), ("EdDSA", &good_ed)] {
        let r = get(&c.http, &format!("{}/x", a.url), Some(t)).await;
        assert_eq!(r.status(), 200, "forged good {name} token");
    }

    let cases = token_cases(&f, &l.refresh, &l.access);
    let mut app_before = app.requests();
    let metrics_before = metric(
        &a.metrics(&c.http).await,
        "tether_proxy_requests_total{outcome=\"invalid_token\"",
    )
    .unwrap_or(0.0);
    let mut refused = 0.0;
    for case in &cases {
        let r = c
            .http
            .get(format!("{}/orders/1", a.url))
            .header("authorization", format!("Bearer {}", case.token))
            .send()
            .await
            .unwrap_or_else(|e| panic!("[token: {}] request failed: {e}", case.name));
        let status = r.status().as_u16();
        assert!(
            case.want.contains(&status),
            "[token: {}] answered {status}, want {:?}",
            case.name,
            case.want
        );
        if case.want.len() > 1 {
            println!("token case {:?} answered {status}", case.name);
        }
        if status == 503 {
            assert_eq!(
                r.headers()["tether-relock"],
                "refresh",
                "[token: {}]",
                case.name
            );
            let v: Value = r.json().await.expect("json");
            assert_eq!(
                (v["error"].as_str(), v["action"].as_str()),
                (Some("server_unavailable"), Some("refresh"))
            );
        } else {
            assert_not_5xx(status, case.name);
            if status == 401 {
                refused += 1.0;
                assert_eq!(
                    r.headers()["www-authenticate"],
                    "Bearer error=\"invalid_token\"",
                    "[token: {}]",
                    case.name
                );
                let v: Value = r.json().await.expect("json");
                assert_eq!(v["error"], "invalid_token", "[token: {}]", case.name);
                assert!(
                    v["detail"].as_str().is_some_and(|d| !d.is_empty()),
                    "[token: {}] {v}",
                    case.name
                );
            }
        }
        assert_eq!(
            app.requests(),
            app_before,
            "[token: {}] reached the upstream",
            case.name
        );
        assert_eq!(
            trap.requests(),
            0,
            "[token: {}] reached an address named by a token",
            case.name
        );
    }
    let m = a.metrics(&c.http).await;
    assert_eq!(
        metric(&m, "tether_proxy_requests_total{outcome=\"invalid_token\"").unwrap_or(0.0)
            - metrics_before,
        refused,
        "every 401 is counted as invalid_token"
    );

    // Authorization header variants.
    let valid = format!("Bearer {}", l.access);
    let auth_cases = vec![
        AuthCase {
            name: "no Authorization",
            headers: vec![],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "Basic credentials",
            headers: vec!["Basic YWxpY2U6cHc=".into()],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "Bearer with no token",
            headers: vec!["Bearer".into()],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "Bearer and spaces only",
            headers: vec!["Bearer    ".into()],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "Token scheme",
            headers: vec![format!("Token {}", l.access)],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "token without a scheme",
            headers: vec![l.access.clone()],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "Bearer, token, junk",
            headers: vec![format!("{valid} junk")],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "Bearer of the refresh token",
            headers: vec![format!("Bearer {}", l.refresh)],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "token in the query string only",
            headers: vec![],
            query: "?access_token=TOKEN",
            may_forward: false,
        },
        AuthCase {
            name: "two Authorization headers, garbage first",
            headers: vec!["Bearer garbage".into(), valid.clone()],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "two Authorization headers, valid first",
            headers: vec![valid.clone(), "Bearer garbage".into()],
            query: "",
            may_forward: false,
        },
        AuthCase {
            name: "lowercase bearer",
            headers: vec![format!("bearer {}", l.access)],
            query: "",
            may_forward: true,
        },
        AuthCase {
            name: "uppercase BEARER",
            headers: vec![format!("BEARER {}", l.access)],
            query: "",
            may_forward: true,
        },
    ];
    app_before = app.requests();
    let mut observed = Vec::new();
    for case in &auth_cases {
        let mut req = c.http.get(format!(
            "{}/orders/2{}",
            a.url,
            case.query.replace("TOKEN", &l.access)
        ));
        for h in &case.headers {
            req = req.header("authorization", h);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("[auth: {}] request failed: {e}", case.name));
        let status = r.status().as_u16();
        assert_not_5xx(status, case.name);
        if status == 200 {
            assert!(case.may_forward, "[auth: {}] was forwarded", case.name);
            let v: Value = r.json().await.expect("json");
            assert_eq!(
                (v["subject"].as_str(), v["server"].as_str()),
                (Some("alice"), Some("eu-1")),
                "[auth: {}]",
                case.name
            );
            app_before += 1;
        } else {
            assert_eq!(status, 401, "[auth: {}]", case.name);
            let challenge = r.headers()["www-authenticate"].clone();
            let v: Value = r.json().await.expect("json");
            // No bearer credentials at all: the bare challenge (RFC 6750
            // §3.1); anything else that was sent: `invalid_token`.
            let want = if v["detail"] == "no bearer token" {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            assert_eq!(challenge, want, "[auth: {}]", case.name);
        }
        assert_eq!(
            app.requests(),
            app_before,
            "[auth: {}] reached the upstream",
            case.name
        );
        observed.push(format!("{}: {status}", case.name));
    }
    println!("authorization variants as the proxy answers them today: {observed:#?}");

    // Nothing changed: the real and the forged token still work, the
    // refresh family is intact, and nothing ever reached the trap.
    for t in [&l.access, &good] {
        assert_eq!(
            get(&c.http, &format!("{}/after", a.url), Some(t))
                .await
                .status(),
            200
        );
    }
    let (s, v) = refresh(&c.http, &a.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(s, 200, "refresh after the token corpus: {v}");
    assert_eq!(trap.requests(), 0);
    cases.len() + auth_cases.len()
}
