//! `ctl events`: tails the master's event feed (WebSocket), one line per event, or the raw
//! messages with `-o json`.

use super::output::{escape_controls, s, short_id, time};
use super::{CtlArgs, CtlError, encode};
use serde_json::Value;

/// The filters of `cronmesh ctl events`.
pub struct FeedQuery {
    pub topics: Option<String>,
    pub job: Option<String>,
    pub status: Option<String>,
    pub since_revision: Option<i64>,
}

/// How one connection of `events` ended.
enum FeedEnd {
    /// The server closed it, or the network broke.
    Dropped(String),
    /// The server said this subscriber lagged: reconnecting with the cursor fills the gap.
    Lagged,
}

/// `cronmesh ctl events`: tails the feed, one line per event (`-o json`: the raw messages).
/// With `follow`, a dropped connection is opened again (backoff 1 s … 15 s) from the last
/// cursor, so the replay gives exactly what was missed meanwhile.
pub async fn events(a: &CtlArgs, q: FeedQuery, mut cursor: Option<String>, follow: bool) -> Result<(), CtlError> {
    let mut backoff = std::time::Duration::from_secs(1);
    let mut first = true;
    loop {
        let end = match feed_once(a, &q, if first { q.since_revision } else { None }, &mut cursor).await {
            Ok(end) => end,
            // the first connection's refusal (401, 403, 400) is the answer; later ones are retried
            Err(e) if first || !follow => return Err(e),
            Err(e) => FeedEnd::Dropped(e.to_string()),
        };
        first = false;
        if !follow {
            return Ok(());
        }
        match end {
            FeedEnd::Lagged => {
                eprintln!("cronmesh ctl events: fell behind the feed; resuming from the last cursor");
                continue;
            }
            FeedEnd::Dropped(why) => {
                eprintln!(
                    "cronmesh ctl events: feed connection lost ({why}); reconnecting in {} s{}",
                    backoff.as_secs(),
                    if cursor.is_some() { " from the last cursor" } else { "" }
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(15));
            }
        }
    }
}

async fn feed_once(
    a: &CtlArgs,
    q: &FeedQuery,
    since_revision: Option<i64>,
    cursor: &mut Option<String>,
) -> Result<FeedEnd, CtlError> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut url = format!(
        "{}/api/v1/events?",
        a.url.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let since = if cursor.is_some() {
        None
    } else {
        since_revision.map(|r| r.to_string())
    };
    for (k, v) in [
        ("topics", q.topics.clone()),
        ("job", q.job.clone()),
        ("status", q.status.clone()),
        ("since_revision", since),
        ("cursor", cursor.clone()),
    ] {
        if let Some(v) = v {
            url.push_str(&format!("{k}={}&", encode(&v)));
        }
    }
    let mut req = url
        .into_client_request()
        .map_err(|e| CtlError::Usage(format!("--url {:?}: {e}", a.url)))?;
    if let Some(t) = &a.token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().map_err(|_| {
                CtlError::Usage("the token (--token or CRONMESH_TOKEN) is not a valid header value".into())
            })?,
        );
    }
    let trust = super::trust(a)?;
    let (mut ws, _) = crate::http_client::connect_websocket(req, &trust)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let text = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                CtlError::from_answer(resp.status().as_u16(), &text, false, a.token.is_some())
            }
            other => match crate::http_client::untrusted_certificate(&other) {
                Some(reason) => CtlError::Untrusted { reason },
                None => CtlError::Unreachable {
                    url: a.url.clone(),
                    reason: format!("cannot open the event feed: {}", super::error_chain(&other)),
                },
            },
        })?;
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return Ok(FeedEnd::Dropped(e.to_string())),
        };
        let text = match msg {
            tokio_tungstenite::tungstenite::Message::Text(t) => t.to_string(),
            tokio_tungstenite::tungstenite::Message::Close(f) => {
                return Ok(FeedEnd::Dropped(
                    f.map(|f| format!("closed: {} {}", u16::from(f.code), f.reason))
                        .unwrap_or_else(|| "closed".into()),
                ));
            }
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(c) = v["cursor"].as_str() {
            *cursor = Some(c.to_string());
        }
        if v["type"] == "lagged" && cursor.is_some() {
            if a.output.is_data() {
                println!("{text}");
            }
            return Ok(FeedEnd::Lagged);
        }
        if a.output.is_data() {
            println!("{}", if a.raw { text } else { escape_controls(&text) });
            continue;
        }
        let detail = match v["type"].as_str().unwrap_or("") {
            "job.saved" => format!(
                "{} rev {} schedule {:?}",
                s(&v["job"]["name"]),
                s(&v["revision"]),
                s(&v["job"]["schedule"])
            ),
            "job.deleted" => format!("{} rev {}", s(&v["name"]), s(&v["revision"])),
            "worker.joined" => s(&v["worker"]["id"]),
            "worker.left" => s(&v["id"]),
            "run.started" => format!(
                "{} run {} on {}",
                s(&v["run"]["job"]),
                short_id(&s(&v["run"]["run_id"])),
                s(&v["run"]["worker"])
            ),
            "run.finished" => format!(
                "{} run {} {} exit {} in {} ms",
                s(&v["run"]["job"]),
                short_id(&s(&v["run"]["run_id"])),
                s(&v["run"]["status"]),
                s(&v["run"]["exit_code"]),
                s(&v["run"]["duration_ms"])
            ),
            "resume_failed" => format!("{} ({}): {}", s(&v["topics"]), s(&v["reason"]), s(&v["message"])),
            _ => text.clone(),
        };
        let line = format!("{}  {:<14} {detail}", time(&v["ts"]), s(&v["type"]));
        println!("{}", if a.raw { line } else { escape_controls(&line) });
    }
    Ok(FeedEnd::Dropped("the server ended the stream".into()))
}
