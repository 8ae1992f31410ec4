//! Result sets of text columns, as the console sends them.

use bytes::BytesMut;
use wire::backend::{BackendMessage, FieldDescription};

/// `text` in pg_type.
const TEXT_OID: u32 = 25;

pub struct ResultSet {
    columns: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl ResultSet {
    pub fn new(columns: &[&'static str]) -> Self {
        ResultSet { columns: columns.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, values: Vec<String>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    pub fn encode(self, out: &mut BytesMut) {
        let fields = self
            .columns
            .iter()
            .map(|c| FieldDescription {
                name: (*c).to_owned(),
                table_oid: 0,
                column: 0,
                type_oid: TEXT_OID,
                type_size: -1,
                type_modifier: -1,
                format: 0,
            })
            .collect();
        BackendMessage::RowDescription { fields }.encode(out);
        let n = self.rows.len();
        for row in self.rows {
            BackendMessage::DataRow { values: row.into_iter().map(|v| Some(v.into())).collect() }.encode(out);
        }
        BackendMessage::CommandComplete { tag: format!("SHOW {n}") }.encode(out);
    }
}
