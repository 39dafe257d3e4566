//! Email over SMTP with lettre. `smtp.url`: `smtp://host:port` (no TLS, for a local relay),
//! `smtp://host:port?tls=required` (STARTTLS), `smtps://host:port` (implicit TLS); credentials as
//! `user:password@`.

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{DeliveryError, Email};
use crate::config::SmtpConfig;

pub struct EmailSender {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

fn sender(config: &SmtpConfig) -> Result<Mailbox, String> {
    config
        .from
        .parse()
        .map_err(|e| format!("smtp.from: not a mailbox: {e}"))
}

fn transport(url: &str) -> Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, String> {
    AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| format!("smtp.url: {e}"))
}

/// What [`EmailSender::new`] would refuse: `smtp.from` must be a mailbox, `smtp.url` usable.
pub fn check(config: &SmtpConfig) -> Result<(), String> {
    sender(config)?;
    if let Some(url) = &config.url {
        transport(url.expose())?;
    }
    Ok(())
}

impl EmailSender {
    pub fn new(config: &SmtpConfig) -> Result<EmailSender, String> {
        let from = sender(config)?;
        let transport = match &config.url {
            Some(url) => Some(
                transport(url.expose())?
                    .timeout(Some(std::time::Duration::from_secs(10)))
                    .build(),
            ),
            None => None,
        };
        Ok(EmailSender { transport, from })
    }

    /// Sends the message; `Ok` only when the SMTP server accepted it.
    pub async fn send(&self, email: &Email) -> Result<(), DeliveryError> {
        let transport = self
            .transport
            .as_ref()
            .ok_or(DeliveryError::NotConfigured("smtp.url"))?;
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|e| DeliveryError::Failed(format!("bad recipient: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| DeliveryError::Failed(e.to_string()))?;
        transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError::Failed(e.to_string()))
    }
}
