//! Configs for the processes the kit starts: the shipped `conf/*.toml`
//! loaded as TOML tables and edited key by key, so a test runs the same
//! file a user starts from and no template drifts away from it.

use std::path::{Path, PathBuf};

const DISCOVERY: &str = include_str!("../../conf/discovery.toml");
const PROXIES: [(&str, &str); 3] = [
    ("eu", include_str!("../../conf/proxy.eu.toml")),
    ("us", include_str!("../../conf/proxy.us.toml")),
    ("ap", include_str!("../../conf/proxy.ap.toml")),
];

/// The regions of the shipped proxy configs, in their order.
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// A config as a TOML table, edited before it is written.
#[derive(Clone, Debug)]
pub struct Conf {
    pub table: toml::Table,
}

impl Conf {
    /// Parses TOML text.
    pub fn parse(name: &str, text: &str) -> Result<Conf, String> {
        text.parse()
            .map(|table| Conf { table })
            .map_err(|e| format!("{name} is not valid TOML: {e}"))
    }

    /// The shipped `conf/discovery.toml`.
    pub fn discovery() -> Conf {
        Conf::parse("conf/discovery.toml", DISCOVERY).expect("shipped config")
    }

    /// The shipped `conf/proxy.<region>.toml`; `None` for other regions.
    pub fn proxy(region: &str) -> Option<Conf> {
        PROXIES.iter().find(|(r, _)| *r == region).map(|(r, text)| {
            Conf::parse(&format!("conf/proxy.{r}.toml"), text).expect("shipped config")
        })
    }

    /// The shipped `conf/proxy.<region>.toml` when there is one, else the
    /// `eu` one (the shape is the same for every region).
    pub fn proxy_or_eu(region: &str) -> Conf {
        Conf::proxy(region).unwrap_or_else(|| Conf::proxy("eu").expect("eu is shipped"))
    }

    fn section_mut(&mut self, section: &str) -> &mut toml::Table {
        let entry = self
            .table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => t,
            other => panic!("[{section}] is not a table: {other}"),
        }
    }

    /// Sets `[section] key = value` (the section is created if missing).
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        self.section_mut(section)
            .insert(key.to_owned(), value.into());
        self
    }

    /// Removes `[section] key`, so the program's default applies.
    pub fn remove(&mut self, section: &str, key: &str) -> &mut Self {
        self.section_mut(section).remove(key);
        self
    }

    /// Empties `[section]` (keeping it, empty).
    pub fn clear(&mut self, section: &str) -> &mut Self {
        self.section_mut(section).clear();
        self
    }

    /// Keeps only `keys` of `[section]`.
    pub fn retain(&mut self, section: &str, keys: &[&str]) -> &mut Self {
        self.section_mut(section)
            .retain(|k, _| keys.contains(&AsRef::<str>::as_ref(k)));
        self
    }

    /// Merges TOML lines (`key = value`, one a line, as they would appear
    /// inside `[section]`) into `[section]`, replacing keys already set.
    pub fn merge(&mut self, section: &str, lines: &str) -> &mut Self {
        let extra: toml::Table = lines
            .parse()
            .unwrap_or_else(|e| panic!("extra [{section}] lines are not TOML ({e}):\n{lines}"));
        let t = self.section_mut(section);
        for (k, v) in extra {
            t.insert(k, v);
        }
        self
    }

    /// A string value, if set.
    pub fn get_str(&self, section: &str, key: &str) -> Option<&str> {
        self.table.get(section)?.get(key)?.as_str()
    }

    pub fn to_text(&self) -> String {
        toml::to_string(&self.table).expect("a TOML table serialises")
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<PathBuf> {
        std::fs::write(path, self.to_text())?;
        Ok(path.to_owned())
    }
}
