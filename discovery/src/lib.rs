//! Placeholder: the discovery helper replaces this file.
pub mod config {
    use std::path::Path;
    #[derive(Debug, Clone)]
    pub struct Config {
        pub worker_threads: usize,
    }
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct ConfigError(pub String);
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(e.to_string()))?;
        parse(&text, path)
    }
    pub fn parse(_text: &str, _path: &Path) -> Result<Config, ConfigError> {
        Ok(Config { worker_threads: 1 })
    }
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);
pub async fn run(_config: config::Config) -> Result<(), Error> {
    Ok(())
}
