//! Session settings a pooled client expects, kept as the SQL that recreates each one, so the
//! proxy can make any server it attaches look like the client's own session: settings the
//! client has and the server lacks are applied, settings the server carries from someone
//! else are reset. Two clients with the same settings share servers without any replay.

use std::collections::BTreeMap;

use super::classify::Effect;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Setting name (lower case) → statement that sets it.
    by_name: BTreeMap<String, String>,
    /// What a server really has is not known (a SET ran inside a transaction that may have
    /// rolled back): the next sync starts from RESET ALL.
    unknown: bool,
}

/// The settings records of a client and of its server as they were when the transaction
/// began and at each savepoint, so a rollback restores what PostgreSQL restores.
#[derive(Debug, Default)]
pub struct Undo {
    begin: Option<(Settings, Settings)>,
    savepoints: Vec<(String, (Settings, Settings))>,
}

impl Undo {
    pub fn begin(&mut self, client: &Settings, server: &Settings) {
        self.begin = Some((client.clone(), server.clone()));
        self.savepoints.clear();
    }

    /// The transaction committed: its changes stay.
    pub fn commit(&mut self) {
        self.begin = None;
        self.savepoints.clear();
    }

    /// The transaction rolled back: both records go back to BEGIN.
    pub fn rollback(&mut self, client: &mut Settings, server: &mut Settings) {
        if let Some((c, s)) = self.begin.take() {
            *client = c;
            *server = s;
        }
        self.savepoints.clear();
    }

    pub fn savepoint(&mut self, name: &str, client: &Settings, server: &Settings) {
        if self.begin.is_some() {
            self.savepoints.push((name.to_owned(), (client.clone(), server.clone())));
        }
    }

    /// `RELEASE name`: the savepoint and every later one are gone, their changes kept.
    pub fn release(&mut self, name: &str) {
        if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
            self.savepoints.truncate(i);
        }
    }

    /// `ROLLBACK TO name`: back to the savepoint, which stays; later ones are gone.
    pub fn rollback_to(&mut self, name: &str, client: &mut Settings, server: &mut Settings) {
        if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
            self.savepoints.truncate(i + 1);
            let (c, s) = &self.savepoints[i].1;
            *client = c.clone();
            *server = s.clone();
        }
    }
}

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Settings {
    /// The settings a StartupMessage asks for: every parameter, and each `-c name=value` (or
    /// `--name=value`) in `options`.
    pub fn from_startup(params: &[(String, String)]) -> Result<Settings, String> {
        if params.iter().any(|(k, _)| k == "replication") {
            return Err("replication connections are not supported on the pooled port".into());
        }
        let mut s = Settings::default();
        for (name, value) in params {
            if NOT_SETTINGS.contains(&name.as_str()) || name.starts_with("_pq_.") {
                continue;
            }
            s.set_value(name, value);
        }
        if let Some((_, options)) = params.iter().find(|(k, _)| k == "options") {
            for (name, value) in parse_options(options)? {
                s.set_value(&name, &value);
            }
        }
        Ok(s)
    }

    fn set_value(&mut self, name: &str, value: &str) {
        let key = name.to_ascii_lowercase();
        let sql = format!("SET {} TO {}", quote_ident(&key), quote_literal(value));
        self.by_name.insert(key, sql);
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(String::as_str)
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
        self.unknown = false;
    }

    /// For a server's record: a change ran inside a transaction whose outcome decides it.
    pub fn mark_unknown(&mut self) {
        self.unknown = true;
    }

    /// Records what a statement that succeeded did to the settings.
    pub fn apply(&mut self, effect: &Effect) {
        match effect {
            // SET TRANSACTION only lasts for the transaction.
            Effect::Set { name, .. } if name == "transaction" || name == "transaction snapshot" => {}
            Effect::Set { name, sql } => {
                self.by_name.insert(name.clone(), sql.clone());
            }
            Effect::Reset { name } => {
                self.by_name.remove(name);
            }
            Effect::ResetAll | Effect::DiscardAll => self.clear(),
            _ => {}
        }
    }

    /// Statements that turn a server whose settings are `server` into one with `self`'s, or
    /// `None` when they already agree.
    pub fn sync_sql(&self, server: &Settings) -> Option<String> {
        if server.unknown {
            let mut stmts = vec!["RESET ALL".to_owned()];
            stmts.extend(self.by_name.values().cloned());
            return Some(stmts.join("; "));
        }
        let mut stmts: Vec<String> = Vec::new();
        for (name, _) in server.by_name.iter().filter(|(n, _)| !self.by_name.contains_key(*n)) {
            stmts.push(reset_sql(name));
        }
        for (name, sql) in &self.by_name {
            if server.by_name.get(name) != Some(sql) {
                stmts.push(sql.clone());
            }
        }
        (!stmts.is_empty()).then(|| stmts.join("; "))
    }
}

fn reset_sql(name: &str) -> String {
    match name {
        "session_authorization" => "RESET SESSION AUTHORIZATION".into(),
        "role" => "RESET ROLE".into(),
        "session characteristics" => {
            "RESET default_transaction_isolation; RESET default_transaction_read_only; \
             RESET default_transaction_deferrable"
                .into()
        }
        other => format!("RESET {}", quote_ident(other)),
    }
}

/// Parses libpq's `options`: `-c name=value` or `--name=value`, separated by spaces, with
/// backslash escaping spaces inside values.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let assignment = if w == "-c" {
            it.next().ok_or("option -c needs a name=value argument")?
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else {
            return Err(format!("unsupported startup option {w:?}: only -c name=value is accepted"));
        };
        let (name, value) =
            assignment.split_once('=').ok_or_else(|| format!("invalid startup option {assignment:?}"))?;
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn unknown_server_settings_start_from_reset_all() {
        let mut client = Settings::default();
        client.apply(&Effect::Set { name: "search_path".into(), sql: "SET search_path TO a".into() });
        let mut server = client.clone();
        assert_eq!(client.sync_sql(&server), None);
        server.mark_unknown();
        assert_eq!(client.sync_sql(&server).unwrap(), "RESET ALL; SET search_path TO a");
    }

    #[test]
    fn startup_parameters_and_options() {
        let s = Settings::from_startup(&p(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "it's"),
            ("options", "-c search_path=a,b --statement-timeout=5s -c x.y=a\\ b"),
        ]))
        .unwrap();
        assert_eq!(s.get("application_name"), Some("SET \"application_name\" TO 'it''s'"));
        assert_eq!(s.get("search_path"), Some("SET \"search_path\" TO 'a,b'"));
        assert_eq!(s.get("statement_timeout"), Some("SET \"statement_timeout\" TO '5s'"));
        assert_eq!(s.get("x.y"), Some("SET \"x.y\" TO 'a b'"));
        assert!(s.get("user").is_none());
        assert!(Settings::from_startup(&p(&[("replication", "true")])).is_err());
        assert!(Settings::from_startup(&p(&[("options", "-j")])).is_err());
    }

    #[test]
    fn sync_resets_foreign_settings_and_applies_missing_ones() {
        let mut client = Settings::default();
        client.apply(&Effect::Set { name: "search_path".into(), sql: "SET search_path TO a".into() });
        let mut server = Settings::default();
        server.apply(&Effect::Set {
            name: "default_transaction_read_only".into(),
            sql: "SET default_transaction_read_only = on".into(),
        });
        let sql = client.sync_sql(&server).unwrap();
        assert_eq!(sql, "RESET \"default_transaction_read_only\"; SET search_path TO a");
        assert_eq!(client.sync_sql(&client.clone()), None);
        client.apply(&Effect::ResetAll);
        assert!(client.is_empty());
    }
}
