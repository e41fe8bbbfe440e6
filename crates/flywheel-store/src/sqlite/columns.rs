//! Column access for SQLite rows ([`crate::rows::Columns`]): uuids are
//! stored as hyphenated text.

use crate::rows::{parse_uuid, Columns};
use crate::StoreResult;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

impl Columns for SqliteRow {
    fn text(&self, col: &str) -> StoreResult<String> {
        Ok(self.try_get(col)?)
    }

    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }

    fn int(&self, col: &str) -> StoreResult<i64> {
        Ok(self.try_get(col)?)
    }

    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }

    fn uuid(&self, col: &str) -> StoreResult<Uuid> {
        parse_uuid(col, self.try_get::<&str, _>(col)?)
    }

    fn opt_uuid(&self, col: &str) -> StoreResult<Option<Uuid>> {
        self.try_get::<Option<&str>, _>(col)?.map(|text| parse_uuid(col, text)).transpose()
    }

    fn bytes(&self, col: &str) -> StoreResult<Vec<u8>> {
        Ok(self.try_get(col)?)
    }
}
