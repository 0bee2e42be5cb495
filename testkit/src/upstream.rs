//! An in-process upstream app for proxy tests (axum on 127.0.0.1:0).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// A small in-process upstream app: `/health` (switchable), `/login`
/// (`{"username","home"?}` → `{"userId","homeRegion"}`; user "nobody" is
/// refused), and everything else echoes. Records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub healthy: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        use axum::extract::State as AxState;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        #[derive(Clone)]
        struct St {
            name: String,
            healthy: Arc<AtomicBool>,
            seen: Arc<Mutex<Vec<Seen>>>,
            count: Arc<AtomicUsize>,
        }

        async fn any(
            AxState(st): AxState<St>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            let path = uri.path().to_owned();
            if path == "/health" {
                return if st.healthy.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
                };
            }
            let hm: HashMap<String, String> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            st.count.fetch_add(1, Ordering::SeqCst);
            st.seen.lock().unwrap().push(Seen {
                method: method.to_string(),
                path: path.clone(),
                headers: hm.clone(),
            });
            // `?delay_ms=N`: a slow upstream (shutdown and upgrade tests),
            // recorded in `seen` before the wait.
            if let Some(ms) = uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("delay_ms="))
                    .and_then(|v| v.parse::<u64>().ok())
            }) {
                tokio::time::sleep(std::time::Duration::from_millis(ms.min(30_000))).await;
            }
            let mut extra = HeaderMap::new();
            extra.insert("x-upstream", st.name.parse().unwrap());
            if path == "/login" {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let user = v["username"].as_str().unwrap_or("");
                if user.is_empty() || user == "nobody" {
                    return (
                        StatusCode::UNAUTHORIZED,
                        extra,
                        axum::Json(serde_json::json!({"error":"bad_credentials"})),
                    )
                        .into_response();
                }
                extra.insert("set-cookie", "app=1".parse().unwrap());
                // An app trying to speak the lock protocol must be ignored.
                extra.insert("tether-relock", "http://evil.example".parse().unwrap());
                return (
                    StatusCode::OK,
                    extra,
                    axum::Json(serde_json::json!({"userId": user, "homeRegion": v.get("home").cloned().unwrap_or(serde_json::Value::Null), "welcome": "hi"})),
                )
                    .into_response();
            }
            (
                StatusCode::OK,
                extra,
                axum::Json(serde_json::json!({
                    "upstream": st.name,
                    "path": path,
                    "subject": hm.get("x-tether-subject"),
                    "server": hm.get("x-tether-server"),
                })),
            )
                .into_response()
        }

        let st = St {
            name: name.to_owned(),
            healthy: Arc::new(AtomicBool::new(true)),
            seen: Arc::new(Mutex::new(Vec::new())),
            count: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new().fallback(any).with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            addr,
            name: name.to_owned(),
            healthy: st.healthy,
            seen: st.seen,
            count: st.count,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}
