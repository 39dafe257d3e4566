//! SMS delivery (`sms.kind`): `webhook` POSTs JSON `{to, body}` to `sms.url`; `twilio` speaks
//! Twilio's Messages API (form-encoded `To`, `From`, `Body`, Basic auth with the account SID and
//! token) against `sms.url` (e.g. `https://api.twilio.com`); `log` appends messages to
//! `{store.path}/sms-outbox.log` for development — never to gatehouse's own log, which must not
//! carry codes; `none` sends nothing (every send fails as not configured).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::DeliveryError;
use crate::config::SmsConfig;
use crate::outbound::Outbound;

/// E.164: `+`, then 8 to 15 digits, the first not 0.
pub fn valid_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A number as people write it (`+1 (415) 555-0123`, `+1.415.555.0123`) in E.164 form, for
/// comparing numbers; `None` when it is not an E.164 number once the separators are gone.
pub fn normalise_number(number: &str) -> Option<String> {
    let compact: String = number
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    valid_e164(&compact).then_some(compact)
}

enum Kind {
    /// `sms.kind = "none"`: no text messages at all.
    Off,
    Outbox(PathBuf),
    Webhook {
        url: String,
    },
    Twilio {
        url: String,
        from: String,
        sid: String,
        token: String,
    },
}

pub struct SmsSender {
    kind: Kind,
    client: Outbound,
}

impl SmsSender {
    pub fn new(config: &SmsConfig, outbox_dir: &Path) -> Result<SmsSender, String> {
        let kind = match config.kind.as_str() {
            "none" => Kind::Off,
            "webhook" => Kind::Webhook {
                url: config.url.clone().unwrap_or_default(),
            },
            "twilio" => Kind::Twilio {
                url: config.url.clone().unwrap_or_default(),
                from: config.from.clone().unwrap_or_default(),
                sid: config.account_sid.clone().unwrap_or_default(),
                token: config
                    .auth_token
                    .as_ref()
                    .map(|t| t.expose().to_owned())
                    .unwrap_or_default(),
            },
            _ => {
                let path = outbox_dir.join("sms-outbox.log");
                tracing::warn!(
                    outbox = %path.display(),
                    "sms.kind = \"log\": text messages are written to a local file, not sent (development only)"
                );
                Kind::Outbox(path)
            }
        };
        Ok(SmsSender {
            kind,
            client: Outbound::new(Duration::from_secs(10), false)?,
        })
    }

    /// Sends `body` to the E.164 number `to`; `Ok` only when the provider accepted it.
    pub async fn send(&self, to: &str, body: &str) -> Result<(), DeliveryError> {
        let request = match &self.kind {
            Kind::Off => return Err(DeliveryError::NotConfigured("SMS delivery (sms.kind)")),
            Kind::Outbox(path) => return append(path, to, body),
            Kind::Webhook { url } => Request::post(url.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::json!({ "to": to, "body": body }).to_string(),
                ))),
            Kind::Twilio {
                url,
                from,
                sid,
                token,
            } => {
                let form = format!(
                    "To={}&From={}&Body={}",
                    urlencode(to),
                    urlencode(from),
                    urlencode(body)
                );
                let endpoint = format!(
                    "{}/2010-04-01/Accounts/{}/Messages.json",
                    url.trim_end_matches('/'),
                    urlencode(sid)
                );
                Request::post(endpoint)
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .header(
                        http::header::AUTHORIZATION,
                        format!("Basic {}", STANDARD.encode(format!("{sid}:{token}"))),
                    )
                    .body(Full::new(Bytes::from(form)))
            }
        }
        .map_err(|e| DeliveryError::Failed(e.to_string()))?;
        let (status, _) = self
            .client
            .send(request)
            .await
            .map_err(DeliveryError::Failed)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Failed(format!(
                "the SMS provider answered {status}"
            )))
        }
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Appends to the outbox, created 0600 (in a 0700 directory when that is missing too): it holds
/// codes in clear.
fn append(path: &Path, to: &str, body: &str) -> Result<(), DeliveryError> {
    if let Some(dir) = path.parent() {
        crate::private::create_dir(dir)
            .map_err(|e| DeliveryError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut file = crate::private::open_options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DeliveryError::Failed(format!("cannot write {}: {e}", path.display())))?;
    writeln!(file, "to={to} body={body}")
        .map_err(|e| DeliveryError::Failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers_are_recognised() {
        assert!(valid_e164("+14155550123"));
        for bad in [
            "14155550123",
            "+0123456789",
            "+1 415 555",
            "+12",
            "+1234567890123456",
        ] {
            assert!(!valid_e164(bad), "{bad}");
        }
    }

    #[test]
    fn written_numbers_normalise_to_e164() {
        for written in ["+1 (415) 555-0123", " +1.415.555.0123", "+14155550123"] {
            assert_eq!(
                normalise_number(written).as_deref(),
                Some("+14155550123"),
                "{written}"
            );
        }
        for bad in ["415 555 0123", "+1 415 555 O123", "", "+"] {
            assert_eq!(normalise_number(bad), None, "{bad}");
        }
    }
}
