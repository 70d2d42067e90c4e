//! The `helm upgrade --install` command a registration token comes with: complete (release and
//! namespace from the gateway name, hub URL, CA fingerprint, token, name, environments, Argo CD
//! URL, web URL and Argo CD token source) and copy-paste safe. Every value is escaped twice:
//! for Helm's `--set` syntax (a `,` or `\` in a value, a `{` that would start a list) and then
//! for a POSIX shell, so a name such as `x,gateway.hub.plaintext=true` stays one value.

/// Where the gateway's Argo CD token comes from in the printed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgoCdTokenSource {
    /// A file on the machine running helm: `--set-file gateway.argocd.authenticationToken=PATH`.
    File(String),
    /// An existing Secret in the release namespace: `gateway.argocd.authenticationTokenSecretName`.
    Secret(String),
}

/// The default file name printed when no Argo CD token source was given.
pub const DEFAULT_ARGOCD_TOKEN_FILE: &str = "argocd-token";

/// Everything the printed command carries.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Chart reference (path or repo/name).
    pub chart: String,
    /// The hub's gRPC URL as gateways dial it.
    pub hub_url: String,
    /// The hub serves plaintext gRPC (TLS ends at a proxy).
    pub hub_plaintext: bool,
    /// SHA-256 of the hub CA, for first contact (omitted with plaintext).
    pub ca_fingerprint: Option<String>,
    /// The registration token.
    pub token: String,
    /// Gateway name ("" = none).
    pub name: String,
    /// Environments.
    pub environments: Vec<String>,
    /// Argo CD API URL, when given.
    pub argocd_url: Option<String>,
    /// Skip Argo CD certificate verification.
    pub argocd_insecure: bool,
    /// Argo CD web UI URL, when given.
    pub argocd_web_url: Option<String>,
    /// The Argo CD token source; `None` prints a `--set-file` of [`DEFAULT_ARGOCD_TOKEN_FILE`].
    pub argocd_token: Option<ArgoCdTokenSource>,
}

/// The printed command and what it installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallCommand {
    /// Helm release name.
    pub release: String,
    /// Namespace (created by helm if missing).
    pub namespace: String,
    /// The command, one flag per line.
    pub command: String,
}

/// The release name (and namespace) for a gateway name: `argocd-gateway-<name as a DNS label>`,
/// or `argocd-gateway` without a name, at most 48 characters so the chart's resource names equal
/// the release name.
pub fn release_name(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    let slug = slug.strip_prefix("argocd-gateway").unwrap_or(slug).trim_matches('-');
    if slug.is_empty() {
        return "argocd-gateway".to_owned();
    }
    let mut release = format!("argocd-gateway-{slug}");
    release.truncate(48);
    release.trim_end_matches('-').to_owned()
}

/// Escapes a value for Helm's `--set`, `--set-string` and `--set-file` parser: `\` and `,` are
/// escaped everywhere (a `,` would start the next assignment) and a leading `{` (it would make
/// a list).
pub fn set_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        if c == '\\' || c == ',' || (i == 0 && c == '{') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes one element of a `{a,b}` list: besides [`set_value`]'s characters, `{` and `}`.
fn list_element(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '{' | '}') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes one segment of a `--set` key path: `.` separates segments, `[` indexes lists, `=`
/// and `,` end the key.
pub fn set_key_segment(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    for c in k.chars() {
        if matches!(c, '\\' | '.' | ',' | '=' | '[' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn key(path: &[&str]) -> String {
    path.iter().map(|s| set_key_segment(s)).collect::<Vec<_>>().join(".")
}

/// Quotes a word for a POSIX shell: left alone when made only of characters no shell treats
/// specially, else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// True when `url`'s host is a loopback name or address, which a cluster cannot dial.
pub fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let Ok(parsed) = url::Url::parse(&format!("https://{}", rest.trim_end_matches('/'))) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Builds the command.
pub fn helm_command(o: &InstallOptions) -> InstallCommand {
    let release = release_name(&o.name);
    let namespace = release.clone();
    let mut flags: Vec<(&str, String)> = Vec::new();
    let mut string =
        |path: &[&str], value: &str| flags.push(("--set-string", format!("{}={}", key(path), set_value(value))));
    string(&["gateway", "hub", "serverGrpcUrl"], &o.hub_url);
    if let Some(fp) = o.ca_fingerprint.as_deref().filter(|_| !o.hub_plaintext) {
        string(&["registration", "caFingerprint"], fp);
    }
    string(&["registration", "token"], &o.token);
    if !o.name.is_empty() {
        string(&["registration", "name"], &o.name);
    }
    if let Some(url) = &o.argocd_url {
        string(&["gateway", "argocd", "serverUrl"], url);
    }
    if let Some(url) = &o.argocd_web_url {
        string(&["registration", "argocd", "webUiUrl"], url);
    }
    if let Some(ArgoCdTokenSource::Secret(name)) = &o.argocd_token {
        string(&["gateway", "argocd", "authenticationTokenSecretName"], name);
    }
    if !o.environments.is_empty() {
        let list: Vec<String> = o.environments.iter().map(|e| list_element(e)).collect();
        flags.push((
            "--set-string",
            format!("{}={{{}}}", key(&["registration", "environments"]), list.join(",")),
        ));
    }
    if o.hub_plaintext {
        flags.push(("--set", format!("{}=true", key(&["gateway", "hub", "plaintext"]))));
    }
    let argocd_plaintext = o
        .argocd_url
        .as_deref()
        .is_some_and(|u| u.trim().to_ascii_lowercase().starts_with("http://"));
    if argocd_plaintext {
        flags.push(("--set", format!("{}=true", key(&["gateway", "argocd", "plaintext"]))));
    } else if o.argocd_insecure {
        flags.push(("--set", format!("{}=true", key(&["gateway", "argocd", "insecure"]))));
    }
    match &o.argocd_token {
        Some(ArgoCdTokenSource::Secret(_)) => {}
        Some(ArgoCdTokenSource::File(path)) => flags.push((
            "--set-file",
            format!(
                "{}={}",
                key(&["gateway", "argocd", "authenticationToken"]),
                set_value(path)
            ),
        )),
        None => flags.push((
            "--set-file",
            format!(
                "{}={}",
                key(&["gateway", "argocd", "authenticationToken"]),
                DEFAULT_ARGOCD_TOKEN_FILE
            ),
        )),
    }
    let mut command = format!(
        "helm upgrade --install {} {} \\\n  --namespace {} --create-namespace",
        shell_quote(&release),
        shell_quote(&o.chart),
        shell_quote(&namespace)
    );
    for (flag, assignment) in flags {
        command.push_str(&format!(" \\\n  {flag} {}", shell_quote(&assignment)));
    }
    InstallCommand {
        release,
        namespace,
        command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("registration.token=abc.DEF_-"),
            "registration.token=abc.DEF_-"
        );
        assert_eq!(shell_quote("registration.name=it's"), r"'registration.name=it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
        // Braces and commas are quoted: unquoted, bash would brace-expand `x={a,b}`.
        assert_eq!(shell_quote("x={a,b}"), "'x={a,b}'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn set_escaping() {
        assert_eq!(
            set_value("x,gateway.hub.plaintext=true"),
            r"x\,gateway.hub.plaintext=true"
        );
        assert_eq!(set_value(r"a\b"), r"a\\b");
        assert_eq!(set_value("{x}"), r"\{x}");
        assert_eq!(set_key_segment("example.com/owner"), r"example\.com/owner");
        assert_eq!(list_element("a,b}"), r"a\,b\}");
    }

    #[test]
    fn release_names() {
        assert_eq!(release_name(""), "argocd-gateway");
        assert_eq!(release_name("Prod EU #1"), "argocd-gateway-prod-eu-1");
        assert_eq!(release_name("argocd-gateway-x"), "argocd-gateway-x");
        assert_eq!(release_name("!!!"), "argocd-gateway");
        let long = release_name(&"a".repeat(80));
        assert_eq!(long.len(), 48);
    }

    #[test]
    fn loopback() {
        assert!(is_loopback("https://localhost:8443"));
        assert!(is_loopback("127.0.0.1:8443"));
        assert!(is_loopback("https://[::1]:8443"));
        assert!(!is_loopback("https://hub.example.com:8443"));
        assert!(!is_loopback("grpc://10.0.0.1:8443"));
    }

    #[test]
    fn command_is_complete() {
        let c = helm_command(&InstallOptions {
            chart: "./charts/argocd-gateway".into(),
            hub_url: "https://hub.example.com:8443".into(),
            ca_fingerprint: Some("sha256:ab".into()),
            token: "id.secret".into(),
            name: "prod".into(),
            environments: vec!["production".into(), "eu".into()],
            argocd_url: Some("http://argocd-server.argocd".into()),
            argocd_token: Some(ArgoCdTokenSource::Secret("argocd-gateway-account".into())),
            ..Default::default()
        });
        assert_eq!(
            (c.release.as_str(), c.namespace.as_str()),
            ("argocd-gateway-prod", "argocd-gateway-prod")
        );
        for part in [
            "helm upgrade --install argocd-gateway-prod ./charts/argocd-gateway",
            "--namespace argocd-gateway-prod --create-namespace",
            "--set-string gateway.hub.serverGrpcUrl=https://hub.example.com:8443",
            "--set-string registration.caFingerprint=sha256:ab",
            "--set-string registration.token=id.secret",
            "--set-string 'registration.environments={production,eu}'",
            "--set-string gateway.argocd.authenticationTokenSecretName=argocd-gateway-account",
            "--set gateway.argocd.plaintext=true",
        ] {
            assert!(c.command.contains(part), "{part} in\n{}", c.command);
        }
        assert!(!c.command.contains("--set-file"), "{}", c.command);
        let default = helm_command(&InstallOptions {
            chart: "c".into(),
            hub_url: "h:1".into(),
            token: "t.s".into(),
            ..Default::default()
        });
        assert!(
            default
                .command
                .contains("--set-file gateway.argocd.authenticationToken=argocd-token"),
            "{}",
            default.command
        );
    }
}
