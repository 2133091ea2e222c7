//! The channels notices go out on (`[[master.notify.channels]]`): a signed webhook, a Slack
//! incoming webhook, or a mail over SMTP. Secrets are read from the environment once, at start,
//! and never logged or shown.

use crate::config::{ChannelConfig, ChannelKind, NotifyConfig};
use crate::coord::Delivery;
use hmac::{Hmac, Mac};
use lettre::AsyncTransport;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one attempt may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a channel could not be set up (the master does not start).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("master.notify.channels: channel {channel:?}: {message}")]
    Setup { channel: String, message: String },
}

/// One channel, ready to send.
pub struct Channel {
    pub config: ChannelConfig,
    secret: Option<Vec<u8>>,
    mailer: Option<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
}

impl Channel {
    /// What it sends to, without secrets: the URL's scheme and host, or the recipients.
    pub fn target(&self) -> String {
        match self.config.kind {
            ChannelKind::Email => self.config.to.join(", "),
            _ => {
                let url = self.config.url.as_deref().unwrap_or_default();
                let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
                let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let host = host.rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}")
            }
        }
    }
    /// `message` with every secret-bearing string of the channel (its URL, its SMTP URL, with
    /// or without their query and user parts) replaced by its target.
    pub fn redact(&self, message: &str) -> String {
        let mut out = message.to_string();
        let target = self.target();
        for url in [&self.config.url, &self.config.smtp_url].into_iter().flatten() {
            let mut forms = vec![url.clone()];
            if let Some((head, _)) = url.split_once(['?', '#']) {
                forms.push(head.to_string());
            }
            for f in forms.clone() {
                if let Some((_, rest)) = f.split_once("://") {
                    forms.push(rest.to_string());
                }
            }
            forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
            for f in forms.iter().filter(|f| f.len() > 8) {
                out = out.replace(f.as_str(), &target);
            }
        }
        out
    }
    pub fn signed(&self) -> bool {
        self.secret.is_some()
    }
}

/// Every configured channel, by name.
#[derive(Default)]
pub struct Channels {
    pub by_name: BTreeMap<String, Channel>,
    http: Option<reqwest::Client>,
}

/// `sha256=<hex of HMAC-SHA256(body) with key>`: the `X-Cronmesh-Signature` header.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    let out = mac.finalize().into_bytes();
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Channels {
    /// Sets the channels up from the config (the config was validated: kinds have what they need).
    pub fn from_config(n: &NotifyConfig) -> Result<Self, ChannelError> {
        let mut by_name = BTreeMap::new();
        for c in &n.channels {
            let setup = |message: String| ChannelError::Setup {
                channel: c.name.clone(),
                message,
            };
            let env = |var: &Option<String>| -> Result<Option<String>, ChannelError> {
                match var {
                    None => Ok(None),
                    Some(v) => match std::env::var(v) {
                        Ok(s) if !s.is_empty() => Ok(Some(s)),
                        _ => Err(setup(format!("the environment variable {v} is not set"))),
                    },
                }
            };
            let secret = env(&c.secret_env)?.map(String::into_bytes);
            let mailer = match c.kind {
                ChannelKind::Email => {
                    let url = c.smtp_url.as_deref().unwrap_or_default();
                    let (tls, rest) = match url.strip_prefix("smtps://") {
                        Some(r) => (true, r),
                        None => (false, url.strip_prefix("smtp://").unwrap_or(url)),
                    };
                    let rest = rest.trim_end_matches('/');
                    let (host, port) = match rest.rsplit_once(':') {
                        Some((h, p)) => (
                            h.to_string(),
                            p.parse::<u16>()
                                .map_err(|_| setup(format!("smtp_url {url:?}: {p:?} is not a port")))?,
                        ),
                        None => (rest.to_string(), if tls { 465 } else { 25 }),
                    };
                    let mut b = if tls {
                        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::relay(&host)
                            .map_err(|e| setup(format!("smtp_url {url:?}: {e}")))?
                            .port(port)
                    } else {
                        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(&host).port(port)
                    };
                    b = b.timeout(Some(SEND_TIMEOUT));
                    if let (Some(user), Some(pass)) = (&c.username, env(&c.password_env)?) {
                        b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                            user.clone(),
                            pass,
                        ));
                    }
                    Some(b.build())
                }
                _ => None,
            };
            by_name.insert(
                c.name.clone(),
                Channel {
                    config: c.clone(),
                    secret,
                    mailer,
                },
            );
        }
        let http = if by_name.is_empty() {
            None
        } else {
            Some(
                crate::http_client::builder()
                    .timeout(SEND_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("cronmesh/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| ChannelError::Setup {
                        channel: "*".into(),
                        message: format!("cannot make an HTTP client: {e}"),
                    })?,
            )
        };
        Ok(Channels { by_name, http })
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// One attempt at delivering `d`; the error is one line for the delivery's `last_error`,
    /// which the API, the feed and the logs show: it never holds the channel's URL (a Slack
    /// incoming-webhook URL is a secret), only its [`Channel::target`].
    pub async fn send(&self, d: &Delivery) -> Result<(), String> {
        let Some(ch) = self.by_name.get(&d.channel) else {
            return Err(format!(
                "channel {:?} is not configured on this master (configured: {})",
                d.channel,
                self.names().join(", ")
            ));
        };
        self.attempt(ch, d).await.map_err(|e| ch.redact(&e))
    }

    async fn attempt(&self, ch: &Channel, d: &Delivery) -> Result<(), String> {
        match ch.config.kind {
            ChannelKind::Webhook => {
                let body = serde_json::to_vec(&d.payload).expect("JSON serializes");
                let mut req = self
                    .http()?
                    .post(ch.config.url.as_deref().unwrap_or_default())
                    .header("content-type", "application/json")
                    .header("x-cronmesh-event", d.event.as_str())
                    .header("x-cronmesh-delivery", &d.id);
                if let Some(key) = &ch.secret {
                    req = req.header("x-cronmesh-signature", signature(key, &body));
                }
                answer(&ch.target(), req.body(body).send().await).await
            }
            ChannelKind::Slack => {
                let body = serde_json::json!({ "text": text(d) });
                answer(
                    &ch.target(),
                    self.http()?
                        .post(ch.config.url.as_deref().unwrap_or_default())
                        .json(&body)
                        .send()
                        .await,
                )
                .await
            }
            ChannelKind::Email => {
                let mailer = ch.mailer.as_ref().ok_or("no SMTP transport")?;
                let mut m = lettre::Message::builder()
                    .from(
                        ch.config
                            .from
                            .as_deref()
                            .unwrap_or_default()
                            .parse()
                            .map_err(|e| format!("from: {e}"))?,
                    )
                    .subject(subject(d))
                    .header(lettre::message::header::ContentType::TEXT_PLAIN);
                for to in &ch.config.to {
                    m = m.to(to.parse().map_err(|e| format!("to {to:?}: {e}"))?);
                }
                let msg = m.body(text(d)).map_err(|e| e.to_string())?;
                mailer
                    .send(msg)
                    .await
                    .map(|_| ())
                    .map_err(|e| one_line(&format!("SMTP: {e}")))
            }
        }
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        self.http.as_ref().ok_or_else(|| "no HTTP client".to_string())
    }
}

/// An HTTP attempt's outcome; a request that got no answer says where it went (`target`).
async fn answer(target: &str, r: Result<reqwest::Response, reqwest::Error>) -> Result<(), String> {
    match r {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            Err(one_line(&format!("HTTP {status}: {body}")))
        }
        Err(e) => {
            let e = e.without_url();
            let mut msg = format!("{target}: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            Err(one_line(&msg))
        }
    }
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    s.chars().take(300).collect()
}

fn field<'a>(d: &'a Delivery, k: &str) -> &'a serde_json::Value {
    d.payload.get(k).unwrap_or(&serde_json::Value::Null)
}

/// `[cronmesh] backup failure: failed (exit 1)`.
pub fn subject(d: &Delivery) -> String {
    let status = field(d, "status").as_str().unwrap_or("");
    let exit = field(d, "exit_code")
        .as_i64()
        .map(|c| format!(" (exit {c})"))
        .unwrap_or_default();
    match d.event {
        crate::model::NotifyEvent::Test => format!("[cronmesh] test message on channel {}", d.channel),
        crate::model::NotifyEvent::Paused => format!("[cronmesh] {} paused after repeated failures", d.job),
        e => format!("[cronmesh] {} {}: {status}{exit}", d.job, e.as_str()),
    }
}

/// The plain text of a Slack message or a mail.
pub fn text(d: &Delivery) -> String {
    let mut t = subject(d).trim_start_matches("[cronmesh] ").to_string();
    let ms = |k: &str| {
        field(d, k)
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            t.push_str(&format!("\n{k}: {v}"));
        }
    };
    let s = |k: &str| field(d, k).as_str().filter(|s| !s.is_empty()).map(str::to_string);
    line("run", s("run_id"));
    line("planned", ms("planned_at"));
    line("ended", ms("ended_at"));
    line("worker", s("worker"));
    line("error", s("error"));
    line(
        "failures in a row",
        field(d, "consecutive_failures")
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| n.to_string()),
    );
    line("reason", s("reason"));
    line("see", s("url"));
    if let Some(out) = s("output_tail") {
        t.push_str("\n\nlast output:\n");
        t.push_str(&out);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231 test case 2
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn an_error_never_holds_the_channel_url_only_its_target() {
        let ch = Channel {
            config: ChannelConfig {
                name: "chat".into(),
                kind: ChannelKind::Slack,
                url: Some("https://hooks.slack.com/services/T0/B0/s3cr3tT0k3n?x=1".into()),
                secret_env: None,
                smtp_url: None,
                from: None,
                to: vec![],
                username: None,
                password_env: None,
            },
            secret: None,
            mailer: None,
        };
        assert_eq!(ch.target(), "https://hooks.slack.com");
        for e in [
            "error sending request for url (https://hooks.slack.com/services/T0/B0/s3cr3tT0k3n?x=1)",
            "error for https://hooks.slack.com/services/T0/B0/s3cr3tT0k3n: timed out",
            "hooks.slack.com/services/T0/B0/s3cr3tT0k3n?x=1 refused",
        ] {
            let r = ch.redact(e);
            assert!(!r.contains("s3cr3t"), "{r}");
            assert!(r.contains("https://hooks.slack.com"), "{r}");
        }
    }
}
