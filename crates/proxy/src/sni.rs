//! Routing by the TLS server name (SNI). A client that connects to `<label>.<public-host>`
//! names a project by `<label>` (docs/DESIGN.md, Routing), so its startup packet can carry
//! the upstream's own database name. Any other server name, or none (IP literal hosts, plain
//! TCP), leaves routing to the database name as before.

/// The label a server name selects under `public_host`, lower-cased (DNS names are
/// case-insensitive; rustls already lower-cases what it hands over). `None` when the name is
/// not under the public host, or is the public host itself: routing by database name then.
///
/// Everything under the public host is Berth's: a name with more than one label before it
/// (`a.b.<public-host>`) comes back whole, and matches no project, since project names hold
/// no dot and the wildcard certificate covers one label only.
pub fn label(server_name: Option<&str>, public_host: Option<&str>) -> Option<String> {
    let (name, host) = (normalize(server_name?), normalize(public_host?));
    if host.is_empty() {
        return None;
    }
    let label = name.strip_suffix(host.as_str())?.strip_suffix('.')?;
    Some(label.to_owned())
}

/// Lower-case, without the one trailing dot a fully qualified name may carry.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::label;

    const HOST: Option<&str> = Some("db.example.com");

    #[test]
    fn a_name_under_the_public_host_gives_its_label_lower_cased() {
        assert_eq!(label(Some("shop.db.example.com"), HOST).as_deref(), Some("shop"));
        assert_eq!(label(Some("Shop.DB.Example.COM"), HOST).as_deref(), Some("shop"));
        assert_eq!(label(Some("shop.db.example.com"), Some("DB.example.com.")).as_deref(), Some("shop"));
        assert_eq!(label(Some("my_shop-2.db.example.com"), HOST).as_deref(), Some("my_shop-2"));
    }

    #[test]
    fn a_trailing_dot_is_the_same_name() {
        assert_eq!(label(Some("shop.db.example.com."), HOST).as_deref(), Some("shop"));
        assert_eq!(label(Some("db.example.com."), HOST), None);
    }

    #[test]
    fn other_names_route_by_database_name() {
        // The public host itself, and names that only end like it.
        assert_eq!(label(Some("db.example.com"), HOST), None);
        assert_eq!(label(Some("evildb.example.com"), HOST), None);
        assert_eq!(label(Some("shop.evildb.example.com"), HOST), None);
        assert_eq!(label(Some("shop.db.example.com.evil.org"), HOST), None);
        assert_eq!(label(Some("example.com"), HOST), None);
        assert_eq!(label(Some("localhost"), HOST), None);
        // No SNI (IP literal hosts), or no public host configured.
        assert_eq!(label(None, HOST), None);
        assert_eq!(label(Some("shop.db.example.com"), None), None);
        assert_eq!(label(Some("shop."), Some("")), None);
    }

    #[test]
    fn nested_and_empty_labels_stay_under_the_public_host() {
        // Neither falls back to database names; neither is a project's label.
        assert_eq!(label(Some("dev.shop.db.example.com"), HOST).as_deref(), Some("dev.shop"));
        assert_eq!(label(Some(".db.example.com"), HOST).as_deref(), Some(""));
    }
}
