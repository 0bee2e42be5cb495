//! `POST /auth/refresh` bodies: `parse_json::<RefreshRequest>` then
//! `validate()`. Never panics; every refusal names a field; an accepted
//! body holds only values the proxy may act on, and survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_protocol::validate::{parse_json, server_id};
use tether_protocol::wire::{RefreshRequest, MAX_TOKEN_LEN};

/// The invariants of the bugs this target and the corpus found (now fixed,
/// docs/security-testing.md): always checked.
fn known_bugs() -> bool {
    true
}

fuzz_target!(|data: &[u8]| {
    let req = match parse_json::<RefreshRequest>(data) {
        Ok(r) => r,
        Err(e) => {
            // An unknown key that is itself empty (`{"":1}`) is reported as
            // field "" (found by this target; cosmetic, see
            // docs/security-testing.md).
            assert!(
                !e.field.is_empty() || e.message.starts_with("unknown field ``"),
                "a shape error names no field: {e:?}"
            );
            return;
        }
    };
    match req.validate() {
        Err(e) => assert!(
            matches!(
                e.field.as_str(),
                "refreshToken" | "closestServerId" | "unreachableServerId"
            ),
            "validate blamed {:?}",
            e.field
        ),
        Ok(()) => {
            assert!(!req.refresh_token.is_empty() && req.refresh_token.len() <= MAX_TOKEN_LEN);
            for id in [&req.closest_server_id, &req.unreachable_server_id]
                .into_iter()
                .flatten()
            {
                assert!(server_id("id", id).is_ok(), "accepted server id {id:?}");
            }
            if known_bugs() {
                // The contract is a JSON object. Known bug 2.
                assert!(
                    data.trim_ascii_start().starts_with(b"{"),
                    "accepted a body that is not an object"
                );
            }
            let again: RefreshRequest = parse_json(&serde_json::to_vec(&req).expect("serialises"))
                .expect("a valid request re-parses");
            assert_eq!(again, req);
        }
    }
});
