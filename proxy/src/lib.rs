//! Placeholder while the proxy is written.
pub mod config {
    use std::path::Path;
    #[derive(Debug, Clone)]
    pub struct ProxyConfig;
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct ConfigError(pub String);
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(e.to_string()))?;
        parse(&text, path)
    }
    pub fn parse(_text: &str, _path: &Path) -> Result<ProxyConfig, ConfigError> {
        Ok(ProxyConfig)
    }
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);
pub fn run(_config: config::ProxyConfig) -> Result<(), Error> {
    Ok(())
}
