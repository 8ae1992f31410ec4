//! SQLSTATE codes as five ASCII bytes, with the ones Berth itself sends named as PostgreSQL
//! names them in `errcodes.txt`.

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    pub const SUCCESSFUL_COMPLETION: SqlState = SqlState(*b"00000");
    pub const CONNECTION_EXCEPTION: SqlState = SqlState(*b"08000");
    pub const CONNECTION_FAILURE: SqlState = SqlState(*b"08006");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState(*b"08P01");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState(*b"0A000");
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState(*b"28000");
    pub const INVALID_PASSWORD: SqlState = SqlState(*b"28P01");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState(*b"42501");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState(*b"3D000");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState(*b"54000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState(*b"53300");
    pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState(*b"53400");
    pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState(*b"57P01");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState(*b"57P03");
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState(*b"57P05");
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: SqlState = SqlState(*b"25P03");
    pub const TRANSACTION_TIMEOUT: SqlState = SqlState(*b"25P04");
    pub const INTERNAL_ERROR: SqlState = SqlState(*b"XX000");

    /// Parses a code as it arrives in an ErrorResponse `C` field.
    pub fn from_code(code: &str) -> Option<SqlState> {
        let b: [u8; 5] = code.as_bytes().try_into().ok()?;
        b.iter().all(|c| c.is_ascii_alphanumeric()).then_some(SqlState(b))
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).expect("constructed from ASCII")
    }

    /// The two-character class, e.g. `08` for connection exceptions.
    pub fn class(&self) -> &str {
        &self.code()[..2]
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::fmt::Debug for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqlState({})", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_class() {
        let s = SqlState::from_code("28P01").unwrap();
        assert_eq!(s, SqlState::INVALID_PASSWORD);
        assert_eq!(s.class(), "28");
        assert!(SqlState::from_code("28P0").is_none());
        assert!(SqlState::from_code("28P0;").is_none());
    }
}
