//! TLS on the client listener (rustls through Pingora, ring crypto).
//!
//! The files are checked when the config is loaded ([`check_pair`]), so a
//! missing file, a file without a certificate or key, or a key that does
//! not belong to the certificate is a config error naming the key, not a
//! panic when Pingora builds its acceptor.

use std::path::Path;
use std::sync::Arc;

use pingora_core::listeners::tls::TlsSettings;
use pingora_core::tls as rustls;

/// Checks a certificate chain and private key; on failure returns the
/// config key at fault and what is wrong.
pub fn check_pair(cert: &Path, key: &Path) -> Result<(), (&'static str, String)> {
    let cert_s = cert.display().to_string();
    let key_s = key.display().to_string();
    for (name, path) in [("server.tls_cert_file", cert), ("server.tls_key_file", key)] {
        if let Err(e) = std::fs::metadata(path) {
            return Err((name, format!("cannot read the file: {e}")));
        }
    }
    match rustls::load_pem_file_ca(&cert_s) {
        Ok(der) if !der.is_empty() => {}
        Ok(_) => {
            return Err((
                "server.tls_cert_file",
                "no PEM certificate (\"BEGIN CERTIFICATE\") in the file".into(),
            ))
        }
        Err(e) => {
            return Err((
                "server.tls_cert_file",
                format!("not a PEM certificate: {e}"),
            ))
        }
    }
    match rustls::load_pem_file_private_key(&key_s) {
        Ok(der) if !der.is_empty() => {}
        Ok(_) => {
            return Err((
                "server.tls_key_file",
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into(),
            ))
        }
        Err(e) => return Err(("server.tls_key_file", format!("not a PEM private key: {e}"))),
    }
    let Ok(Some((certs, private))) = rustls::load_certs_and_key_files(&cert_s, &key_s) else {
        return Err((
            "server.tls_key_file",
            "the certificate or key could not be loaded".into(),
        ));
    };
    rustls::install_default_crypto_provider();
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map(|_| ())
        .map_err(|e| {
            (
                "server.tls_key_file",
                format!("does not fit the certificate in server.tls_cert_file: {e}"),
            )
        })
}

/// Checks a PEM file of CA certificates (`routing.peer_ca_file`).
pub fn check_ca(path: &Path) -> Result<(), String> {
    let mut store = rustls::RootCertStore::empty();
    rustls::load_ca_file_into_store(path, &mut store).map_err(|e| format!("{e}"))?;
    if store.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(())
}

/// The client side for probing `https://` peers: the system's roots plus
/// `extra_ca` (a broken system store only loses the system roots).
pub fn peer_client_config(extra_ca: Option<&Path>) -> Arc<rustls::ClientConfig> {
    rustls::install_default_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    if let Err(e) = rustls::load_platform_certs_incl_env_into_store(&mut roots) {
        tracing::warn!("system CA certificates not loaded: {e}");
    }
    if let Some(ca) = extra_ca {
        if let Err(e) = rustls::load_ca_file_into_store(ca, &mut roots) {
            tracing::warn!("routing.peer_ca_file {} not loaded: {e}", ca.display());
        }
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Pingora's TLS settings for the client listener: ALPN offers `h2` and
/// `http/1.1` (`server.tls_http2`, the default), or `http/1.1` alone. A
/// client that offers no ALPN speaks HTTP/1.1.
pub fn settings(cert: &Path, key: &Path, http2: bool) -> pingora_core::Result<TlsSettings> {
    let mut s = TlsSettings::intermediate(&cert.display().to_string(), &key.display().to_string())?;
    if http2 {
        s.enable_h2();
    } else {
        s.set_alpn(pingora_core::protocols::ALPN::H1);
    }
    Ok(s)
}
