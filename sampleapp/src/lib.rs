//! Placeholder: the sample-app helper replaces this file.
pub mod cli {
    #[derive(Debug, clap::Args)]
    pub struct Args {}
    pub fn run(_args: Args) -> Result<(), std::io::Error> {
        Ok(())
    }
}
