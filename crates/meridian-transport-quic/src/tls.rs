//! Mutual TLS for the QUIC transport: PEM material, the rustls and quinn
//! configurations built from it, and a throwaway CA for dev clusters.
//!
//! Every node holds a certificate signed by the cluster CA whose SAN
//! contains `node-{id}.meridian`. Both sides verify:
//! - the server requires a client certificate chaining to the CA;
//! - the client checks the server certificate against the CA *and* the
//!   name `node-{id}.meridian`, so a stale address that now belongs to
//!   another node is not mistaken for the intended peer;
//! - the listener checks each envelope's `from_node` against the client
//!   certificate (see [`PeerIdentity`]), so one node cannot speak for
//!   another.
//!
//! Only the `ring` crypto provider is used (never the process default), so
//! no aws-lc build is needed and nothing depends on global state.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use meridian_transport::TransportError;

/// ALPN protocol id; bumped if the framing ever changes incompatibly.
pub const ALPN_PROTOCOL: &[u8] = b"meridian-raft/1";

/// Connections with no traffic (keep-alives included) for this long are
/// dead. Also bounds how long a handshake to a silent address can take.
const MAX_IDLE_TIMEOUT_MS: u32 = 10_000;
/// Keep-alives keep idle-but-healthy connections (quiesced ranges) open
/// and let a dead peer be noticed well within the idle timeout.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Uni streams a peer may have open towards us at once: one long-lived
/// stream for normal batches plus concurrent snapshots. Bounds the number
/// of reader tasks per connection.
pub(crate) const MAX_INBOUND_UNI_STREAMS: u32 = 16;

/// The DNS name a node's certificate must carry: `node-{id}.meridian`.
pub fn node_server_name(node_id: u64) -> String {
    format!("node-{node_id}.meridian")
}

/// PEM-encoded certificate chain, private key and cluster CA of one node.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The node certificate first, then any intermediates.
    pub cert_chain_pem: String,
    /// PKCS#8, PKCS#1 or SEC1 private key of the node certificate.
    pub key_pem: String,
    /// The cluster CA; peers' certificates must chain to it.
    pub ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    // The key must never end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_chain_pem", &format_args!("{} bytes", self.cert_chain_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the three PEM files. Contents are validated when the transport
    /// starts (or by [`TlsMaterial::quinn_server_config`]).
    pub fn from_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>, ca: impl AsRef<Path>) -> Result<Self, TransportError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| TransportError::Tls(format!("reading {}: {e}", p.display())));
        Ok(TlsMaterial { cert_chain_pem: read(cert_chain.as_ref())?, key_pem: read(key.as_ref())?, ca_pem: read(ca.as_ref())? })
    }

    fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, TransportError> {
        let chain = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TransportError::Tls(format!("certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(TransportError::Tls("certificate chain: no CERTIFICATE block".into()));
        }
        Ok(chain)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TransportError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TransportError::Tls(format!("private key: {e}")))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TransportError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| TransportError::Tls(format!("CA certificate: {e}")))?;
            roots.add(cert).map_err(|e| TransportError::Tls(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TransportError::Tls("CA: no CERTIFICATE block".into()));
        }
        Ok(Arc::new(roots))
    }

    /// rustls server side: TLS 1.3 only (QUIC requires it), client
    /// certificates mandatory and verified against the CA.
    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, TransportError> {
        let provider = ring_provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TransportError::Tls(format!("client verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain()?, self.private_key()?)
            .map_err(tls_err)?;
        config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
        Ok(config)
    }

    /// rustls client side: presents our certificate, trusts only the CA.
    pub fn rustls_client_config(&self) -> Result<rustls::ClientConfig, TransportError> {
        let mut config = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.cert_chain()?, self.private_key()?)
            .map_err(tls_err)?;
        config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
        Ok(config)
    }

    /// quinn server configuration with Meridian's transport limits.
    pub fn quinn_server_config(&self) -> Result<quinn::ServerConfig, TransportError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.rustls_server_config()?)
            .map_err(|e| TransportError::Tls(format!("quic server config: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = base_transport_config();
        transport.max_concurrent_uni_streams(MAX_INBOUND_UNI_STREAMS.into());
        config.transport_config(Arc::new(transport));
        Ok(config)
    }

    /// quinn client configuration. Connections are one-way (the dialer
    /// sends, the listener receives), so the listener may open no streams
    /// back to us.
    pub fn quinn_client_config(&self) -> Result<quinn::ClientConfig, TransportError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.rustls_client_config()?)
            .map_err(|e| TransportError::Tls(format!("quic client config: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = base_transport_config();
        transport.max_concurrent_uni_streams(0u32.into());
        transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

fn base_transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(MAX_IDLE_TIMEOUT_MS).into()));
    transport
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: rustls::Error) -> TransportError {
    TransportError::Tls(e.to_string())
}

fn rcgen_err(e: rcgen::Error) -> TransportError {
    TransportError::Tls(format!("certificate generation: {e}"))
}

/// A throwaway cluster CA for local dev clusters and tests. The key lives
/// only in memory; persist the issued [`TlsMaterial`] if processes need it.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A fresh self-signed CA (ECDSA P-256).
    pub fn generate() -> Result<DevCa, TransportError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "Meridian dev cluster CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
        let cert = params.self_signed(&key).map_err(rcgen_err)?;
        Ok(DevCa { cert, key })
    }

    /// The CA's private key (DER): dev tooling derives the cluster's other
    /// secrets (the gossip key) from it, so that a node added later gets
    /// the same ones.
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The CA certificate, for [`TlsMaterial::ca_pem`].
    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `node_id`, valid as both TLS server and client,
    /// with SANs `node-{id}.meridian`, `localhost` and `127.0.0.1`.
    pub fn issue(&self, node_id: u64) -> Result<TlsMaterial, TransportError> {
        let mut params = rcgen::CertificateParams::new(vec![node_server_name(node_id), "localhost".to_string()]).map_err(rcgen_err)?;
        params.subject_alt_names.push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("meridian node {node_id}"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(rcgen_err)?;
        Ok(TlsMaterial { cert_chain_pem: cert.pem(), key_pem: key.serialize_pem(), ca_pem: self.ca_pem() })
    }
}

/// The authenticated identity of an inbound connection: its client
/// certificate, already verified against the CA during the handshake.
///
/// Envelopes carry `from_node` in the clear; this checks the claim against
/// the certificate's `node-{id}.meridian` name, so a node's key can only
/// ever speak for that node.
pub(crate) struct PeerIdentity {
    end_entity: CertificateDer<'static>,
    /// The one node id already proven, so the common case is a compare.
    verified: Mutex<Option<u64>>,
}

impl PeerIdentity {
    /// `None` if the connection carries no certificate (cannot happen with
    /// our server config, but the type system does not know that).
    pub(crate) fn of(conn: &quinn::Connection) -> Option<PeerIdentity> {
        let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        let end_entity = certs.into_iter().next()?;
        Some(PeerIdentity { end_entity, verified: Mutex::new(None) })
    }

    /// The node id proven so far, for logs (0 = none yet).
    pub(crate) fn node_id(&self) -> u64 {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner).unwrap_or(0)
    }

    /// True if the certificate is valid for `node-{from_node}.meridian`.
    pub(crate) fn may_speak_for(&self, from_node: u64) -> bool {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if *verified == Some(from_node) {
            return true;
        }
        let Ok(name) = ServerName::try_from(node_server_name(from_node)) else {
            return false;
        };
        let ok = rustls::server::ParsedCertificate::try_from(&self.end_entity)
            .and_then(|cert| rustls::client::verify_server_name(&cert, &name))
            .is_ok();
        if ok {
            *verified = Some(from_node);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_ca_material_builds_quinn_configs() {
        let ca = DevCa::generate().unwrap();
        let m = ca.issue(7).unwrap();
        m.quinn_server_config().unwrap();
        m.quinn_client_config().unwrap();
        assert!(!format!("{m:?}").contains("PRIVATE KEY"), "Debug must not print the key");
    }

    #[test]
    fn garbage_pem_is_a_tls_error() {
        let ca = DevCa::generate().unwrap();
        let mut m = ca.issue(1).unwrap();
        m.ca_pem = "not a pem".into();
        assert!(matches!(m.quinn_client_config(), Err(TransportError::Tls(_))));
        let mut m = ca.issue(1).unwrap();
        m.key_pem = String::new();
        assert!(matches!(m.quinn_server_config(), Err(TransportError::Tls(_))));
    }

    #[test]
    fn from_files_round_trips() {
        let ca = DevCa::generate().unwrap();
        let m = ca.issue(3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k, a) = (dir.path().join("node.crt"), dir.path().join("node.key"), dir.path().join("ca.crt"));
        std::fs::write(&c, &m.cert_chain_pem).unwrap();
        std::fs::write(&k, &m.key_pem).unwrap();
        std::fs::write(&a, &m.ca_pem).unwrap();
        let loaded = TlsMaterial::from_files(&c, &k, &a).unwrap();
        assert_eq!(loaded.cert_chain_pem, m.cert_chain_pem);
        assert!(TlsMaterial::from_files(dir.path().join("missing"), &k, &a).is_err());
    }
}
