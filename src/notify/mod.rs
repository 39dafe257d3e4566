//! Delivery of codes and links: email over SMTP, SMS through a webhook, Twilio, or a development
//! outbox file. The same senders serve the Nexus, WS and Manage families.

pub mod email;
pub mod sms;

use std::path::Path;

use crate::config::{SmsConfig, SmtpConfig};

/// Why a message was not delivered. Never carries the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// No sender is configured for this channel.
    NotConfigured(&'static str),
    /// The server or provider refused or could not be reached.
    Failed(String),
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::NotConfigured(what) => write!(f, "{what} is not configured"),
            DeliveryError::Failed(why) => write!(f, "delivery failed: {why}"),
        }
    }
}

/// An email: subject, plain text, and HTML alternative.
#[derive(Debug, Clone)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Both channels.
pub struct Notifier {
    pub email: email::EmailSender,
    pub sms: sms::SmsSender,
}

impl Notifier {
    pub fn new(smtp: &SmtpConfig, sms: &SmsConfig, outbox_dir: &Path) -> Result<Notifier, String> {
        Ok(Notifier {
            email: email::EmailSender::new(smtp)?,
            sms: sms::SmsSender::new(sms, outbox_dir)?,
        })
    }
}

/// `+14155550123` → `+1•••••••0123`, `ada@example.com` → `a••@example.com`: enough for a person
/// to recognise their own destination, for pages and logs.
pub fn mask(destination: &str) -> String {
    if let Some((local, domain)) = destination.split_once('@') {
        let first: String = local.chars().take(1).collect();
        return format!("{first}••@{domain}");
    }
    let chars: Vec<char> = destination.chars().collect();
    if chars.len() <= 6 {
        return "•".repeat(chars.len());
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "•".repeat(chars.len() - 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_masked() {
        assert_eq!(mask("+14155550123"), "+1••••••0123");
        assert_eq!(mask("ada@example.com"), "a••@example.com");
    }
}
