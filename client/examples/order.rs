//! Logs in through a tether global URL and runs one order workflow.
//!
//! `cargo run -p tether-client --example order -- http://127.0.0.1:PORT`

use serde_json::{json, Value};
use tether_client::{Client, Event, Routing, SERVER_CHANGED_MESSAGE};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let global = std::env::args()
        .nth(1)
        .ok_or("usage: order <global URL, e.g. http://127.0.0.1:8080>")?;
    let client = Client::builder()
        .global_url(global)
        .routing(Routing::Locked)
        .build()?;

    let mut events = client.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let Event::ServerChanged { .. } = event {
                println!("{SERVER_CHANGED_MESSAGE}");
            }
        }
    });

    let login = client
        .login(&json!({"username": "alice", "password": "demo"}))
        .await?;
    println!("locked to {} ({})", login.server.id, login.server.region);
    {
        // While the guard lives, refreshes keep this server.
        let _task = client.critical_task();
        let order: Value = client
            .post("/orders", &json!({"userId": "alice"}))
            .await?
            .json()?;
        let id = order["orderId"].as_str().unwrap_or_default();
        client
            .post(
                &format!("/orders/{id}/items"),
                &json!({"sku": "book", "qty": 1}),
            )
            .await?;
        let done = client
            .post(&format!("/orders/{id}/checkout"), &json!({}))
            .await?;
        println!("checkout: {} {}", done.status, done.text());
    }
    println!("{:?}", client.stats());
    client.logout().await?;
    Ok(())
}
