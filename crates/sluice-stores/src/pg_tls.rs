//! How a Postgres connection is secured, from its URL's `sslmode` as libpq reads it:
//! `disable` (plain); `prefer` (the default: TLS when the server offers it) and `require`
//! (TLS always) encrypt without checking the server's certificate, as libpq does;
//! `verify-ca` and `verify-full` check it against the web's roots and the certificates of
//! `sslrootcert=` (or libpq's `PGSSLROOTCERT`) — a private CA such as a cloud provider's.
//! (`tokio-postgres` parses only the first three modes and no `sslrootcert`: the URL is read
//! here first, and the verifying modes handed to it as `require`.)

use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use sluice::StoreError;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A Postgres server to connect to: the parsed settings and how to secure the connection.
#[derive(Clone)]
pub struct PgTarget {
    /// The connection settings (timeouts set).
    pub config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Reads `url` (`postgres://user:password@host:port/db?sslmode=…&sslrootcert=…`).
    ///
    /// # Errors
    /// A fatal error when `url` is not a Postgres URL, names an unknown `sslmode`, or its root
    /// certificates cannot be read. The URL itself is never in the message.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        // The query starts after the credentials (a password may hold a `?`), as
        // tokio-postgres reads them: up to the first `@`.
        let authority = url.find("://").map_or(0, |i| i + 3);
        let host_part = url[authority..]
            .find('@')
            .map_or(authority, |i| authority + i + 1);
        let (base, query) = match url[host_part..].find('?') {
            Some(i) => (&url[..host_part + i], &url[host_part + i + 1..]),
            None => (url, ""),
        };
        let mut mode = std::env::var("PGSSLMODE").unwrap_or_else(|_| "prefer".to_owned());
        let mut root_file = std::env::var("PGSSLROOTCERT").ok();
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", value)) => mode = value.to_owned(),
                Some(("sslrootcert", value)) => root_file = Some(value.to_owned()),
                _ => kept.push(pair),
            }
        }
        let verify = match mode.as_str() {
            // libpq: `require` with a root certificate file verifies the CA.
            "require" => root_file.is_some(),
            "disable" | "allow" | "prefer" => false,
            "verify-ca" | "verify-full" => true,
            other => {
                return Err(StoreError::fatal(format!(
                    "postgres: sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        };
        let sent_mode = match mode.as_str() {
            "disable" => "disable",
            "allow" | "prefer" => "prefer",
            _ => "require",
        };
        kept.push(match sent_mode {
            "disable" => "sslmode=disable",
            "prefer" => "sslmode=prefer",
            _ => "sslmode=require",
        });
        let mut config: tokio_postgres::Config = format!("{base}?{}", kept.join("&"))
            .parse()
            .map_err(|_| StoreError::fatal("postgres: the url is not a postgres:// url"))?;
        config
            .connect_timeout(std::time::Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(15))
            .tcp_user_timeout(std::time::Duration::from_secs(30));
        // libpq never uses TLS on a Unix socket (and the socket has no host name to check).
        let sockets_only = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        if sockets_only && verify {
            return Err(StoreError::fatal(
                "postgres: sslmode verify-ca/verify-full needs a TCP host (a Unix socket has no TLS)",
            ));
        }
        let tls = (sent_mode != "disable" && !sockets_only)
            .then(|| client_config(verify, root_file.as_deref()))
            .transpose()?
            .map(MakeRustlsConnect::new);
        Ok(Self { config, tls })
    }

    /// Connects; the connection runs on its own task until the client is dropped.
    ///
    /// # Errors
    /// The driver's error (unreachable, refused, TLS failure).
    pub async fn connect(&self, what: &'static str) -> Result<Client, tokio_postgres::Error> {
        let client = self.open(what).await?;
        // A writer that stops mid-transaction (SIGSTOP, a hung process) keeps its row locks
        // for as long as its connection lives, and a stopped process's kernel still answers
        // keepalives: the server ends such a session after 10 s idle in a transaction —
        // before a default lease (15 s) can expire — so the next writer is not blocked behind
        // it. Our transactions never wait on anything but the server. A statement, not a
        // startup option: poolers (PgBouncer) refuse startup options.
        client
            .batch_execute("SET idle_in_transaction_session_timeout = '10s'")
            .await?;
        Ok(client)
    }

    async fn open(&self, what: &'static str) -> Result<Client, tokio_postgres::Error> {
        match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::warn!(%error, "{what} connection ended");
                    }
                });
                Ok(client)
            }
            None => {
                let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::warn!(%error, "{what} connection ended");
                    }
                });
                Ok(client)
            }
        }
    }
}

/// Whether `error` is the server's certificate refused by the checks `verify-ca`/`verify-full`
/// asked for.
pub(crate) fn certificate_refused(error: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(rustls::Error::InvalidCertificate(_)) =
                inner.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        if let Some(rustls::Error::InvalidCertificate(_)) = current.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        source = current.source();
    }
    false
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls settings: verifying against the web's roots and `root_file`'s certificates, or
/// (libpq's `prefer` and `require`) encrypting only.
fn client_config(
    verify: bool,
    root_file: Option<&str>,
) -> Result<rustls::ClientConfig, StoreError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::fatal("postgres: TLS settings").with_source(e))?;
    if !verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = root_file {
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                StoreError::fatal(format!(
                    "postgres: sslrootcert {path}: no certificates read"
                ))
                .with_source(e)
            })?;
        for certificate in certificates {
            roots.add(certificate).map_err(|e| {
                StoreError::fatal(format!("postgres: sslrootcert {path}: a bad certificate"))
                    .with_source(e)
            })?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// libpq's `prefer` and `require`: the channel is encrypted, the server's certificate is not
/// checked (its signature over the handshake still is). Written here because rustls ships no
/// such verifier on purpose; `verify-ca`/`verify-full` are what authenticates a server.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes_are_read_as_libpq_reads_them() {
        let plain = PgTarget::parse("postgres://u:p@h:5/db?sslmode=disable").unwrap();
        assert!(plain.tls.is_none());
        let default = PgTarget::parse("postgres://u:p@h:5/db").unwrap();
        assert!(default.tls.is_some());
        assert_eq!(
            default.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let verify =
            PgTarget::parse("postgres://u:p@h:5/db?sslmode=verify-full&application_name=x")
                .unwrap();
        assert_eq!(
            verify.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(verify.config.get_application_name(), Some("x"));
        let error = PgTarget::parse("postgres://u:secret@h:5/db?sslmode=maybe").unwrap_err();
        assert!(error.to_string().contains("maybe") && !error.to_string().contains("secret"));
        let error =
            PgTarget::parse("postgres://u:p@h:5/db?sslmode=verify-ca&sslrootcert=/nonexistent")
                .unwrap_err();
        assert!(error.to_string().contains("/nonexistent"), "{error}");
        // A `?` in the password is not the query.
        let odd = PgTarget::parse("postgres://u:p?ss@h:5/db?sslmode=disable").unwrap();
        assert_eq!(odd.config.get_dbname(), Some("db"));
        assert_eq!(odd.config.get_password(), Some(&b"p?ss"[..]));
        assert!(odd.tls.is_none());
        // A Unix socket: no TLS, as libpq.
        let socket = PgTarget::parse("postgres://u@%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert!(socket.tls.is_none());
    }
}
