//! The desired gateway version as operators write it and as the hub hands it to `self-update`.

/// Parses a version as operators write it: `1.4.2` or `v1.4.2`.
pub fn parse(text: &str) -> Result<semver::Version, semver::Error> {
    let t = text.trim();
    semver::Version::parse(t.strip_prefix('v').unwrap_or(t))
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
