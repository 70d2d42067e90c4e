//! The desired gateway version as operators write it and as the hub hands it to `self-update`,
//! and the rule both sides apply to it: a gateway moves only upward and within its major version
//! (the gateway's `self-update` acts on it; the hub shows it as "update available" or "held").

use std::cmp::Ordering;

use semver::Version;

/// Parses a version as operators write it: `1.4.2` or `v1.4.2`.
pub fn parse(text: &str) -> Result<Version, semver::Error> {
    let t = text.trim();
    semver::Version::parse(t.strip_prefix('v').unwrap_or(t))
}

/// What to do about the hub's desired version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The hub has no desired version.
    NotSet,
    /// Already at the desired version.
    UpToDate,
    /// Newer, same major: update.
    Upgrade,
    /// Older: never go back.
    RefuseDowngrade,
    /// Another major version: needs `helm upgrade`.
    RefuseMajor,
    /// A GitOps controller manages the Deployment: a patch would be reverted at its next sync
    /// (the gateway decides this from its Deployment; [`decide`] never returns it).
    Held,
}

/// Compares by semver precedence (build metadata does not count).
pub fn decide(current: &Version, desired: Option<&Version>) -> Decision {
    let Some(desired) = desired else {
        return Decision::NotSet;
    };
    match desired.cmp_precedence(current) {
        Ordering::Equal => Decision::UpToDate,
        Ordering::Less => Decision::RefuseDowngrade,
        Ordering::Greater if desired.major != current.major => Decision::RefuseMajor,
        Ordering::Greater => Decision::Upgrade,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_with_or_without_v() {
        assert_eq!(super::parse("v1.4.2").unwrap().to_string(), "1.4.2");
        assert_eq!(super::parse(" 2.0.0-rc.1 ").unwrap().to_string(), "2.0.0-rc.1");
        assert!(super::parse("latest").is_err());
        assert!(super::parse("").is_err());
    }
}
