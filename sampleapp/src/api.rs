//! The HTTP API of one region: login, the order workflow, health and stats.
//!
//! Every response is JSON and carries `X-App-Region`. Errors are
//! `{"error": code}`, plus `field` for a bad request field and `detail`
//! where it helps.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::replication::Replicator;
use crate::store::{Item, Store, StoreCounters, WriteError};
use crate::users::Users;

/// Largest accepted request body, in bytes; larger ones get 413.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The header naming the region that answered.
pub const REGION_HEADER: &str = "x-app-region";

/// Largest accepted item quantity.
pub const MAX_QTY: u64 = 1000;

/// Longest accepted SKU, in bytes.
pub const MAX_SKU_LEN: usize = 64;

/// What one region's handlers share.
#[derive(Clone)]
pub(crate) struct RegionState {
    pub region: Arc<str>,
    pub index: usize,
    pub store: Arc<Store>,
    pub users: Arc<Users>,
    pub healthy: Arc<AtomicBool>,
    pub replicator: Arc<Replicator>,
    pub next_order: Arc<AtomicU64>,
}

/// `GET /stats` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionStats {
    pub region: String,
    pub healthy: bool,
    pub orders: u64,
    pub applied_events: u64,
    pub stale_events: u64,
    pub pending_replication: u64,
}

impl RegionState {
    pub(crate) fn stats(&self) -> RegionStats {
        let StoreCounters {
            orders,
            applied_events,
            stale_events,
            pending_replication,
        } = self.store.counters();
        RegionStats {
            region: self.region.to_string(),
            healthy: self.healthy.load(Ordering::Relaxed),
            orders,
            applied_events,
            stale_events,
            pending_replication,
        }
    }
}

pub(crate) fn router(state: RegionState) -> Router {
    let region_header = HeaderValue::from_str(&state.region)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    let app = Router::new()
        .route("/login", post(login))
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/items", post(add_item))
        .route("/orders/{id}/checkout", post(checkout))
        .route_layer(middleware::from_fn_with_state(state.clone(), health_gate));
    Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .merge(app)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::map_response_with_state(
            region_header,
            tag_region,
        ))
        .with_state(state)
}

async fn tag_region(State(region): State<HeaderValue>, mut res: Response) -> Response {
    res.headers_mut()
        .insert(HeaderName::from_static(REGION_HEADER), region);
    res
}

/// App endpoints answer 503 while the region is switched unhealthy.
async fn health_gate(State(s): State<RegionState>, req: Request, next: Next) -> Response {
    if s.healthy.load(Ordering::Relaxed) {
        next.run(req).await
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response()
    }
}

/// An error answer: `{"error": code}` plus `field` and `detail` when set.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    field: Option<String>,
    detail: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str) -> Self {
        ApiError {
            status,
            code,
            field: None,
            detail: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    /// `400 invalid_request` naming the bad field.
    fn bad_field(field: &str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request")
            .field(field)
            .detail(detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), Value::from(self.code));
        if let Some(f) = self.field {
            body.insert("field".into(), Value::from(f));
        }
        if let Some(d) = self.detail {
            body.insert("detail".into(), Value::from(d));
        }
        (self.status, Json(Value::Object(body))).into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "order_not_found"),
            WriteError::CheckedOut => ApiError::new(StatusCode::CONFLICT, "order_checked_out"),
            WriteError::Incomplete => ApiError::new(StatusCode::CONFLICT, "order_incomplete")
                .detail("the order has no items"),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found")
}

/// The body as a JSON object.
fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
                .field("body")
                .detail(format!("at most {BODY_LIMIT} bytes"))
        } else {
            ApiError::bad_field("body", rejection.body_text())
        }
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_field("body", "must be a JSON object")),
        Err(e) => Err(ApiError::bad_field("body", format!("not valid JSON: {e}"))),
    }
}

fn string_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match obj.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ApiError::bad_field(name, "must not be empty")),
        Some(_) => Err(ApiError::bad_field(name, "must be a string")),
        None => Err(ApiError::bad_field(name, "missing")),
    }
}

async fn health(State(s): State<RegionState>) -> Response {
    if s.healthy.load(Ordering::Relaxed) {
        Json(json!({"status": "ok", "region": &*s.region})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "region": &*s.region})),
        )
            .into_response()
    }
}

async fn stats(State(s): State<RegionState>) -> Json<RegionStats> {
    Json(s.stats())
}

async fn login(State(s): State<RegionState>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let obj = json_object(body)?;
    let username = string_field(&obj, "username")?;
    let password = string_field(&obj, "password")?;
    let user = s
        .users
        .check(username, password)
        .ok_or(ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials"))?;
    Ok(Json(json!({"userId": user.id, "homeRegion": user.home_region})).into_response())
}

async fn create_order(
    State(s): State<RegionState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let obj = json_object(body)?;
    let user_id = string_field(&obj, "userId")?;
    if s.users.get(user_id).is_none() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "unknown_user").field("userId"));
    }
    let n = s.next_order.fetch_add(1, Ordering::Relaxed) + 1;
    let order = s
        .store
        .create(format!("{}-{n:06}", s.region), user_id.to_owned());
    s.replicator.replicate(s.index, &order);
    Ok((StatusCode::CREATED, Json(order)).into_response())
}

async fn get_order(State(s): State<RegionState>, Path(id): Path<String>) -> ApiResult {
    let order = s.store.get(&id).ok_or(WriteError::NotFound)?;
    Ok(Json(order).into_response())
}

async fn add_item(
    State(s): State<RegionState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let obj = json_object(body)?;
    let sku = string_field(&obj, "sku")?;
    if sku.len() > MAX_SKU_LEN {
        return Err(ApiError::bad_field(
            "sku",
            format!("at most {MAX_SKU_LEN} bytes"),
        ));
    }
    let qty = match obj.get("qty").map(Value::as_u64) {
        // In range for u32: at most MAX_QTY.
        Some(Some(q)) if (1..=MAX_QTY).contains(&q) => q as u32,
        Some(_) => {
            return Err(ApiError::bad_field(
                "qty",
                format!("must be an integer from 1 to {MAX_QTY}"),
            ))
        }
        None => return Err(ApiError::bad_field("qty", "missing")),
    };
    let order = s.store.add_item(
        &id,
        Item {
            sku: sku.to_owned(),
            qty,
        },
    )?;
    s.replicator.replicate(s.index, &order);
    Ok(Json(order).into_response())
}

async fn checkout(State(s): State<RegionState>, Path(id): Path<String>) -> ApiResult {
    let order = s.store.checkout(&id)?;
    s.replicator.replicate(s.index, &order);
    Ok(Json(order).into_response())
}
