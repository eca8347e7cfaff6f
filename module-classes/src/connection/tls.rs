//! TLS as a transport under any protocol core: a [`TlsStream`] is a
//! [`Stream`] like a socket, so the connection driver and the cores do not
//! change (rustls, in its `read_tls` / `process_new_packets` / `write_tls`
//! manner).
//!
//! A terminal's configuration takes a `tls` section ([`TlsSettings`]):
//!
//! ```toml
//! [instances.mqtts.config.tls]
//! cert = "tls/server.pem"        # the certificate chain, PEM, leaf first
//! key = "tls/server.key"         # its private key, PEM (PKCS#8, PKCS#1 or SEC1)
//! client_ca = "tls/ca.pem"       # optional: clients must present a certificate it signed
//! ```
//!
//! With `client_ca`, the verified client certificate chain is offered to
//! the protocol core once the handshake is done
//! ([`Stream::peer_certificates`], [`super::Protocol::certified`]).
//!
//! Relative paths resolve under the server's data directory. A handshake
//! that fails (plaintext on a TLS port, an untrusted client certificate)
//! closes that connection only.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bindery::{BoxError, InstanceContext};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use serde::Deserialize;

use super::Stream;

/// Plaintext the TLS layer buffers for sending before a write blocks.
const TLS_BUFFER: usize = 256 * 1024;

/// A terminal instance's `tls` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
    /// Client certificates must chain to a CA in this PEM file (mutual
    /// TLS); none: clients are not asked for one.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Loads the files (relative paths under the data directory) into a
    /// rustls configuration; errors name the instance and the file.
    pub fn load(&self, cx: &InstanceContext) -> Result<Arc<ServerConfig>, BoxError> {
        let at = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| -> BoxError {
            format!(
                "instance {:?}: tls.{what} {}: {e}",
                cx.name(),
                path.display()
            )
            .into()
        };
        let cert_path = cx.resolve(&self.cert);
        let certs = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| at("cert", &cert_path, &e))?;
        if certs.is_empty() {
            return Err(at("cert", &cert_path, &"no certificate in the file"));
        }
        let key_path = cx.resolve(&self.key);
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| at("key", &key_path, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| at("cert", &cert_path, &e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let ca_path = cx.resolve(ca);
                let mut roots = RootCertStore::empty();
                let cas = CertificateDer::pem_file_iter(&ca_path)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| at("client_ca", &ca_path, &e))?;
                for c in cas {
                    roots.add(c).map_err(|e| at("client_ca", &ca_path, &e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| at("client_ca", &ca_path, &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| at("key", &key_path, &e))?;
        Ok(Arc::new(config))
    }
}

/// A socket with TLS over it: reads and writes plaintext.
pub struct TlsStream<S: Stream> {
    sock: S,
    tls: ServerConnection,
    /// The socket's end was read.
    eof: bool,
}

impl<S: Stream> TlsStream<S> {
    /// Starts the server side of a TLS connection over `sock`.
    pub fn new(sock: S, config: Arc<ServerConfig>) -> io::Result<TlsStream<S>> {
        let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(TLS_BUFFER));
        Ok(TlsStream {
            sock,
            tls,
            eof: false,
        })
    }

    /// Sends what TLS has ready (handshake, alerts, records) until the
    /// socket would block.
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Like `push`, but a full socket is not an error: the rest goes when
    /// it is writable.
    fn push_some(&mut self) -> io::Result<()> {
        match self.push() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }
}

impl<S: Stream> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.eof {
                        return Ok(0);
                    }
                }
                // The peer closed without close_notify: an end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Say why (an alert) if the socket takes it, then fail.
                let _ = self.push();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.push_some()?;
        }
    }
}

impl<S: Stream> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push_some()?;
        let n = self.tls.writer().write(buf)?;
        self.push_some()?;
        if n == 0 && !buf.is_empty() {
            // TLS holds as much as it may: wait for the socket.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

impl<S: Stream> mio::event::Source for TlsStream<S> {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.sock.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.sock.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.sock.deregister(registry)
    }
}

impl<S: Stream> Stream for TlsStream<S> {
    fn peer(&self) -> String {
        format!("{} (tls)", self.sock.peer())
    }

    fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }
}

impl<S: Stream> Drop for TlsStream<S> {
    fn drop(&mut self) {
        // Best effort: tell the peer this is a clean end.
        self.tls.send_close_notify();
        let _ = self.push();
    }
}
