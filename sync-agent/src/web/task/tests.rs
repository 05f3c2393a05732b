//! The HTTP side against a real listener, with a view task stand-in that
//! answers every ask with a fixed view.

use super::*;
use crate::web::report::Section;

/// Serves `app` on an ephemeral loopback port, views answered by a task
/// that counts how often it was asked.
async fn serve() -> (SocketAddr, Arc<AtomicU64>) {
    let (asks, mut asks_rx) = mpsc::channel::<Ask>(ASK_QUEUE);
    let asked = Arc::new(AtomicU64::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        while let Some(ask) = asks_rx.recv().await {
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = ask.send(Arc::new(ViewJson {
                instance: "sw-<a>".into(),
                roles: vec!["fabric".into()],
                taken_unix_ms: 42,
                sections: vec![Section {
                    id: "fabric",
                    title: "Fabric",
                    html: "<p>members</p>".into(),
                }],
                stats: WebStats::default(),
            }));
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Shared {
        asks,
        counters: Arc::default(),
        refresh_ms: 1500,
    });
    tokio::spawn(async move { axum::serve(listener, app(shared)).await });
    (addr, asked)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn the_page_and_its_json_carry_the_sections() {
    let (addr, asked) = serve().await;
    let page = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let text = page.text().await.unwrap();
    assert!(
        text.contains("<section id=\"fabric\"><h2>Fabric</h2><p>members</p></section>"),
        "{text}"
    );
    assert!(text.contains("data-refresh-ms=\"1500\""), "{text}");
    assert!(
        text.contains("sw-&lt;a&gt;"),
        "the instance is escaped: {text}"
    );

    let json: serde_json::Value = client()
        .get(format!("http://{addr}/api/view"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["sections"][0]["id"], "fabric");
    assert_eq!(json["taken_unix_ms"], 42);
    assert_eq!(asked.load(Ordering::Relaxed), 2);

    let js = client()
        .get(format!("http://{addr}/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.text().await.unwrap().contains("/api/view"));
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405_without_asking_for_a_view() {
    let (addr, asked) = serve().await;
    let missing = client()
        .get(format!("http://{addr}/etc/<passwd>"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert!(
        missing
            .text()
            .await
            .unwrap()
            .starts_with("no page \"/etc/%3Cpasswd%3E\"")
    );
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let refused = client()
            .request(method.clone(), format!("http://{addr}/api/view"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 405, "{method}");
        assert_eq!(refused.headers()["allow"], "GET, HEAD");
    }
    let icon = client()
        .get(format!("http://{addr}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(icon.status(), 204, "a browser's own request is no error");
    let head = client()
        .head(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(asked.load(Ordering::Relaxed), 1, "only the HEAD asked");
}

#[test]
fn a_view_younger_than_min_age_is_shared_and_the_page_refreshes_slower() {
    assert!(MIN_AGE.as_millis() as u64 <= crate::web::config::MIN_REFRESH_MS);
}
