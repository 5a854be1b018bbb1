//! One trace across the system: a transfer through the demo's gateway shows the gateway's
//! spans, the transaction service's request and saga steps, and payment's debit and
//! credit and notification's delivery as children, all under one trace id, exported over
//! OTLP to a receiver inside the test.

use std::time::Duration;

use gatehouse_testkit::{OtlpReceiver, ReceivedSpan, KIND_SERVER};
use serde_json::json;

use crate::harness::*;

fn named<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

#[tokio::test]
async fn one_transfer_is_one_trace_across_gateway_transaction_payment_and_notification() {
    let _heavy = HEAVY.lock().await;
    let rx = OtlpReceiver::http().await;
    let mut d = Deployment::new("traces", false);
    let listen = d.demo_gateway(
        &format!(
            "tracing: {{ otlp_endpoint: \"{}\", scheduled_delay: 100ms }}\n",
            rx.endpoint()
        ),
        "transaction",
        "{ name: transactions, match: { path_prefix: /api/transactions }, upstream: transaction, strip_prefix: /api/transactions }",
    );
    d.set("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.endpoint());
    d.set("OTEL_BSP_SCHEDULE_DELAY", "100");
    let demo = d
        .start("demo", &["payment", "notification", "user", "transaction"])
        .await;

    let c = http();
    let pay = d.url("payment");
    let accounts = [
        account(&c, &pay, "alice", 1000).await,
        account(&c, &pay, "bob", 0).await,
    ];
    let gateway = format!("http://127.0.0.1:{listen}/api/transactions/transfers?wait_ms=10000");
    let body = json!({ "from_account": accounts[0], "to_account": accounts[1], "amount": 100 });
    let r = eventually(
        "the demo gateway forwards the transfer",
        Duration::from_secs(60),
        || {
            let (c, url, body) = (c.clone(), gateway.clone(), body.clone());
            async move {
                let r = c
                    .post(&url)
                    .header("x-user-id", "alice")
                    .json(&body)
                    .send()
                    .await
                    .ok()?;
                (r.status() != 502 && r.status() != 503).then_some(r)
            }
        },
    )
    .await;
    assert_eq!(r.status(), 201, "{}", demo.log_tail());

    let edge = rx
        .wait_for(Duration::from_secs(20), |s| {
            s.iter().any(|x| {
                x.service == "gatehouse"
                    && x.kind == KIND_SERVER
                    && x.attr("http.response.status_code") == Some("201")
            })
        })
        .await;
    let trace = edge
        .iter()
        .find(|x| {
            x.service == "gatehouse"
                && x.kind == KIND_SERVER
                && x.attr("http.response.status_code") == Some("201")
        })
        .unwrap()
        .trace_id
        .clone();
    let spans: Vec<ReceivedSpan> = rx
        .wait_for(Duration::from_secs(20), |s| {
            let t: Vec<ReceivedSpan> = s.iter().filter(|x| x.trace_id == trace).cloned().collect();
            named(&t, "notification", "POST /internal/notifications").len() == 1
                && named(&t, "payment", "POST /ops/credit").len() == 1
        })
        .await
        .into_iter()
        .filter(|x| x.trace_id == trace)
        .collect();
    let one = |service: &str, name: &str| -> ReceivedSpan {
        let found = named(&spans, service, name);
        assert_eq!(found.len(), 1, "{service} {name} in {spans:#?}");
        found[0].clone()
    };
    let gw_server = one("gatehouse", "POST /api/transactions/*");
    let gw_try = one("gatehouse", "POST");
    let tx = one("transaction", "POST /transfers");
    let debit = one("transaction", "saga debit");
    let credit = one("transaction", "saga credit");
    let notify = one("transaction", "saga notify");
    let pay_debit = one("payment", "POST /ops/debit");
    let pay_credit = one("payment", "POST /ops/credit");
    let note = one("notification", "POST /internal/notifications");
    assert_eq!(gw_try.parent_span_id, gw_server.span_id);
    assert_eq!(
        tx.parent_span_id, gw_try.span_id,
        "transaction continues the gateway's try"
    );
    for step in [&debit, &credit, &notify] {
        assert_eq!(step.parent_span_id, tx.span_id, "{step:#?}");
        assert_eq!(
            step.attr("gatehouse.outcome"),
            Some("answered"),
            "{step:#?}"
        );
    }
    assert_eq!(pay_debit.parent_span_id, debit.span_id);
    assert_eq!(pay_credit.parent_span_id, credit.span_id);
    assert_eq!(note.parent_span_id, notify.span_id);
    assert_eq!(pay_debit.attr("http.response.status_code"), Some("200"));
}
