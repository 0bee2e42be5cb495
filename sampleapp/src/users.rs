//! The user table: seeded identically in every region at start-up (it
//! stands for a table that finished replicating long ago).
//!
//! Seed, for regions `R = [r0, r1, …]` and `users = N` (default 1000):
//! - `user-0000` … `user-{N-1}` (at least four digits), password `demo`;
//!   user number `n` has no home region when `n % (len(R) + 1) == 0`,
//!   else home region `R[n % (len(R) + 1) - 1]`. With `eu,us,ap`:
//!   `user-0000` none, `user-0001` eu, `user-0002` us, `user-0003` ap,
//!   `user-0004` none, …
//! - `alice` (home `r0`), `bob` (home `r1`, or `r0` with one region),
//!   `carol` (no home), all with password `demo`.
//!
//! A user's id is its user name.

use std::collections::HashMap;

/// Every seeded user's password.
pub const PASSWORD: &str = "demo";

/// Default number of numbered users.
pub const DEFAULT_USERS: usize = 1000;

/// One user row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub password: String,
    pub home_region: Option<String>,
}

/// The seeded user table.
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_name: HashMap<String, User>,
}

impl Users {
    /// The seed described in the module docs.
    pub fn seed(regions: &[String], numbered: usize) -> Self {
        let mut by_name = HashMap::with_capacity(numbered + 3);
        let mut add = |id: String, home: Option<&String>| {
            by_name.insert(
                id.clone(),
                User {
                    id,
                    password: PASSWORD.to_owned(),
                    home_region: home.cloned(),
                },
            );
        };
        let cycle = regions.len() + 1;
        for n in 0..numbered {
            let slot = n % cycle;
            let home = slot.checked_sub(1).and_then(|i| regions.get(i));
            add(format!("user-{n:04}"), home);
        }
        add("alice".to_owned(), regions.first());
        add("bob".to_owned(), regions.get(1).or(regions.first()));
        add("carol".to_owned(), None);
        Users { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// The user if the password matches.
    pub fn check(&self, name: &str, password: &str) -> Option<&User> {
        self.get(name).filter(|u| u.password == password)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_scheme() {
        let r: Vec<String> = ["eu", "us", "ap"].iter().map(|s| s.to_string()).collect();
        let u = Users::seed(&r, 1000);
        assert_eq!(u.len(), 1003);
        let home = |n: &str| u.get(n).unwrap().home_region.clone();
        assert_eq!(home("user-0000"), None);
        assert_eq!(home("user-0001").as_deref(), Some("eu"));
        assert_eq!(home("user-0002").as_deref(), Some("us"));
        assert_eq!(home("user-0003").as_deref(), Some("ap"));
        assert_eq!(home("user-0004"), None);
        assert_eq!(home("user-0999").as_deref(), Some("ap"));
        assert_eq!(home("alice").as_deref(), Some("eu"));
        assert_eq!(home("bob").as_deref(), Some("us"));
        assert_eq!(home("carol"), None);
        assert!(u.check("alice", "demo").is_some());
        assert!(u.check("alice", "nope").is_none());
        assert!(u.check("mallory", "demo").is_none());
        assert!(u.get("user-1000").is_none());
    }

    #[test]
    fn one_region() {
        let u = Users::seed(&["eu".to_string()], 3);
        assert_eq!(u.get("bob").unwrap().home_region.as_deref(), Some("eu"));
        assert_eq!(
            u.get("user-0001").unwrap().home_region.as_deref(),
            Some("eu")
        );
        assert_eq!(u.get("user-0002").unwrap().home_region, None);
    }
}
