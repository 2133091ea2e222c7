use crate::harness::*;
use cronmesh::config::Config;
use cronmesh::model::JobSpec;
use cronmesh::worker::reporter::MemoryReporter;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::sync::Arc;
use std::time::Duration;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_with_claim_spawn_wait_and_report_and_a_manual_run_continues_the_callers_trace() {
    let c = Cluster::new().await;
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    cronmesh::telemetry::trace::install(&provider);

    let mut config = Config {
        prefix: c.prefix.clone(),
        ..Default::default()
    };
    config.worker.id = "traced".into();
    config.worker.lease_ttl = Duration::from_secs(2);
    let reporter = Arc::new(MemoryReporter::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (ready_tx, _ready_rx) = tokio::sync::watch::channel(cronmesh::telemetry::http::Readiness::default());
    let worker = tokio::spawn(cronmesh::worker::run(
        Arc::new(config),
        c.coord.clone(),
        reporter.clone(),
        shutdown.clone(),
        ready_tx,
    ));
    c.wait_members(&["traced"]).await;

    c.put_job(JobSpec::new("traced-job", "@yearly", "exit 3")).await;
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    c.coord.send_run_now("traced-job", Some(caller.into())).await.unwrap();
    wait_until(Duration::from_secs(10), "the run finished", || {
        !reporter.finished.lock().unwrap().is_empty()
    })
    .await;
    let rec = reporter.finished.lock().unwrap()[0].clone();
    assert_eq!(
        rec.trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c"),
        "the record carries the caller's trace id"
    );
    wait_until(Duration::from_secs(5), "the run span is exported", || {
        exporter.get_finished_spans().unwrap().iter().any(|s| s.name == "run")
    })
    .await;

    let spans = exporter.get_finished_spans().unwrap();
    let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let mine: Vec<&SpanData> = spans.iter().filter(|s| s.span_context.trace_id() == trace).collect();
    let run = mine.iter().find(|s| s.name == "run").expect("a run span");
    assert_eq!(
        run.parent_span_id,
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        "the run continues the caller's span"
    );
    let mut children: Vec<&str> = mine
        .iter()
        .filter(|s| s.parent_span_id == run.span_context.span_id())
        .map(|s| s.name.as_ref())
        .collect();
    children.sort();
    assert_eq!(children, vec!["claim", "report", "spawn", "wait"]);
    for s in mine.iter().filter(|s| s.name != "run") {
        assert!(
            s.start_time >= run.start_time && s.end_time <= run.end_time,
            "{} lies inside the run span",
            s.name
        );
    }
    assert_eq!(attr(run, "cronmesh.job").as_deref(), Some("traced-job"));
    assert_eq!(attr(run, "cronmesh.run_id").as_deref(), Some(rec.run_id.as_str()));
    assert_eq!(attr(run, "cronmesh.worker").as_deref(), Some("traced"));
    assert_eq!(attr(run, "process.exit_code").as_deref(), Some("3"));
    assert_eq!(attr(run, "cronmesh.status").as_deref(), Some("failed"));
    assert!(attr(run, "cronmesh.planned_at").is_some() && attr(run, "cronmesh.lag_ms").is_some());

    // a scheduled run starts a trace of its own, with the run span as its root
    c.put_job(JobSpec::new("every", "@every 1s", "true")).await;
    // the run span ends once the core is told the run exited; the record reaches the reporter
    // after that, from the core: wait for both
    wait_until(
        Duration::from_secs(10),
        "a scheduled run's trace is exported and its record reported",
        || {
            exporter
                .get_finished_spans()
                .unwrap()
                .iter()
                .any(|s| s.name == "run" && attr(s, "cronmesh.job").as_deref() == Some("every"))
                && reporter.finished.lock().unwrap().iter().any(|r| r.job == "every")
        },
    )
    .await;
    let spans = exporter.get_finished_spans().unwrap();
    let root = spans
        .iter()
        .find(|s| s.name == "run" && attr(s, "cronmesh.job").as_deref() == Some("every"))
        .unwrap();
    assert_eq!(root.parent_span_id, SpanId::INVALID, "a root span");
    let rec = reporter
        .finished
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.job == "every")
        .cloned()
        .unwrap();
    assert_eq!(rec.trace_id, Some(root.span_context.trace_id().to_string()));

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_on_and_no_collector_listening_jobs_still_run() {
    let mut c = Cluster::new().await;
    let cfg = c.path("traced.toml");
    std::fs::write(
        &cfg,
        "[tracing]\nenabled = true\nendpoint = \"http://127.0.0.1:9/v1/traces\"\n",
    )
    .unwrap();
    c.start_worker("w1", &["--config", cfg.to_str().unwrap()]);
    c.wait_members(&["w1"]).await;
    c.put_job(JobSpec::new("t", "@every 1s", &c.tick_command(""))).await;
    wait_until(Duration::from_secs(15), "runs happen", || c.records().len() >= 2).await;
    let log = std::fs::read_to_string(c.path("worker-w1.log")).unwrap();
    assert!(log.contains("exporting a trace per run"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
