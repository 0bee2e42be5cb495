//! The corpus class: Bodies at a proxy's `/auth/refresh`: 400 naming the field, 401, 413.

use super::*;

pub(super) async fn refresh_bodies_at_a_proxy() -> usize {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    // The "registry unchanged" check below needs the proxy's own first
    // heartbeat to have landed first (CI once caught it in between).
    a.wait_sees(&c.http, &["eu-1"]).await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let f = Forge {
        key: EncodingKey::from_secret(&ring_secret(&c)),
        now: tether_proxy::tokens::unix_now(),
    };
    let rt = l.refresh.clone();
    let with = |extra: Value| {
        let mut v = json!({"refreshToken": rt});
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        v.to_string()
    };
    let rheader = f.header(|h| h["typ"] = "rt+jwt".into());
    // (name, body, status, field for 400/413)
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{not json".into(), 400, "body"),
        ("empty body", String::new(), 400, "body"),
        ("JSON array", "[1, true]".into(), 400, "body"),
        ("JSON string", format!("{rt:?}"), 400, "body"),
        ("JSON null", "null".into(), 400, "body"),
        ("trailing data", format!("{} {{}}", with(json!({}))), 400, "body"),
        ("nested 5000 deep", format!("{}{}", "[".repeat(5000), "]".repeat(5000)), 400, "body"),
        ("missing refreshToken", "{}".into(), 400, "refreshToken"),
        ("refreshToken a number", json!({"refreshToken": 5}).to_string(), 400, "refreshToken"),
        ("refreshToken null", json!({"refreshToken": null}).to_string(), 400, "refreshToken"),
        ("refreshToken an object", json!({"refreshToken": {"t": rt}}).to_string(), 400, "refreshToken"),
        ("empty refreshToken", json!({"refreshToken": ""}).to_string(), 400, "refreshToken"),
        ("criticalTaskInProgress a string", with(json!({"criticalTaskInProgress": "yes"})), 400, "criticalTaskInProgress"),
        ("criticalTaskInProgress 1", with(json!({"criticalTaskInProgress": 1})), 400, "criticalTaskInProgress"),
        ("closestServerId a number", with(json!({"closestServerId": 3})), 400, "closestServerId"),
        ("unknown field", with(json!({"admin": true})), 400, "admin"),
        ("camel-case miss (refresh_token)", json!({"refresh_token": rt}).to_string(), 400, "refresh_token"),
        ("closestServerId URL-shaped", with(json!({"closestServerId": "http://127.0.0.1:9/"})), 400, "closestServerId"),
        ("closestServerId with spaces", with(json!({"closestServerId": "eu 1"})), 400, "closestServerId"),
        ("closestServerId 200 chars", with(json!({"closestServerId": "e".repeat(200)})), 400, "closestServerId"),
        ("closestServerId empty", with(json!({"closestServerId": ""})), 400, "closestServerId"),
        ("closestServerId with CRLF", with(json!({"closestServerId": "eu-1\r\nx: y"})), 400, "closestServerId"),
        ("unreachableServerId URL-shaped", with(json!({"unreachableServerId": "http://169.254.169.254/"})), 400, "unreachableServerId"),
        ("unreachableServerId traversal", with(json!({"unreachableServerId": "../eu-1"})), 400, "unreachableServerId"),
        ("unreachableServerId unicode", with(json!({"unreachableServerId": "eü-1"})), 400, "unreachableServerId"),
        ("unreachableServerId empty", with(json!({"unreachableServerId": ""})), 400, "unreachableServerId"),
        ("unreachableServerId an array", with(json!({"unreachableServerId": ["eu-1"]})), 400, "unreachableServerId"),
        ("20 KiB body", json!({"refreshToken": "x".repeat(20 * 1024)}).to_string(), 413, "body"),
        ("access token as refresh token", json!({"refreshToken": l.access}).to_string(), 401, ""),
        ("garbage refresh token", json!({"refreshToken": "garbage"}).to_string(), 401, ""),
        (
            "alg none refresh token",
            json!({"refreshToken": format!("{}.{}.", b64(br#"{"alg":"none","typ":"rt+jwt","kid":"k1"}"#), b64(f.refresh_claims(|_| {}).to_string().as_bytes()))})
                .to_string(),
            401,
            "",
        ),
        (
            "refresh token under another key",
            json!({"refreshToken": signed_raw(rheader.to_string().as_bytes(), f.refresh_claims(|_| {}).to_string().as_bytes(), &EncodingKey::from_secret(&[7u8; 32]), Algorithm::HS256)})
                .to_string(),
            401,
            "",
        ),
        (
            "expired refresh token",
            json!({"refreshToken": f.sign(&rheader, &f.refresh_claims(|v| v["exp"] = (f.now - 60).into()))}).to_string(),
            401,
            "",
        ),
        (
            "refresh token with a URL srv",
            json!({"refreshToken": f.sign(&rheader, &f.refresh_claims(|v| v["srv"] = "http://127.0.0.1:9".into()))}).to_string(),
            401,
            "",
        ),
        (
            "refresh token with string exp",
            json!({"refreshToken": f.sign(&rheader, &f.refresh_claims(|v| v["exp"] = (f.now + 99).to_string().into()))}).to_string(),
            401,
            "",
        ),
    ];
    let app_before = app.requests();
    let listing_before = c.servers().await["servers"].as_array().map(Vec::len);
    for (name, body, status, field) in &cases {
        let r = c
            .http
            .post(format!("{}/auth/refresh", a.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("[refresh: {name}] request failed: {e}"));
        let got = r.status().as_u16();
        assert_not_5xx(got, name);
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(got, *status, "[refresh: {name}] {v}");
        if *status == 400 || *status == 413 {
            assert_eq!(v["field"], *field, "[refresh: {name}] {v}");
        } else {
            assert_eq!(v["error"], "invalid_token", "[refresh: {name}] {v}");
        }
        assert_eq!(
            app.requests(),
            app_before,
            "[refresh: {name}] reached the upstream"
        );
    }
    // Duplicate keys: refused (400; today the field is reported as `body`,
    // naming the key itself would be better). The second value must never
    // win silently over a bad first one.
    let dup = format!(r#"{{"refreshToken":"garbage","refreshToken":{rt:?}}}"#);
    let r = c
        .http
        .post(format!("{}/auth/refresh", a.url))
        .header("content-type", "application/json")
        .body(dup)
        .send()
        .await
        .expect("request");
    let got = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(got, 400, "[refresh: duplicate keys] {v}");
    assert!(
        matches!(v["field"].as_str(), Some("body" | "refreshToken")),
        "[refresh: duplicate keys] {v}"
    );
    // An empty key (found by the refresh_body fuzz target): refused, but
    // the error names field "" today; `body` would be clearer.
    let r = c
        .http
        .post(format!("{}/auth/refresh", a.url))
        .header("content-type", "application/json")
        .body(format!(r#"{{"refreshToken":{rt:?},"":1}}"#))
        .send()
        .await
        .expect("request");
    let got = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(got, 400, "[refresh: empty key] {v}");
    assert!(
        matches!(v["field"].as_str(), Some("" | "body")),
        "[refresh: empty key] {v}"
    );

    // Nothing changed: same registry, the family still refreshes, the
    // access token still works.
    assert_eq!(
        c.servers().await["servers"].as_array().map(Vec::len),
        listing_before
    );
    let (s, v) = refresh(&c.http, &a.url, json!({"refreshToken": rt})).await;
    assert_eq!(s, 200, "refresh after the refresh corpus: {v}");
    assert_eq!(
        get(&c.http, &format!("{}/after", a.url), Some(&l.access))
            .await
            .status(),
        200
    );
    cases.len() + 2
}
