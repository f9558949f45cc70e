//! A batch's transaction with the pool it came from: its statements come from the connection's
//! statement cache ([`Db::prepare`]), so after a connection's first batch a COPY costs two round
//! trips (start, finish) and a statement one, none of them parsed again.

use bytes::Bytes;
use deadpool_postgres::Transaction;
use shared::db::{Db, DbError};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CopyInSink, Row, Statement};

pub struct Tx<'a, 'c> {
    db: &'a Db,
    tx: &'a Transaction<'c>,
}

impl<'a, 'c> Tx<'a, 'c> {
    pub fn new(db: &'a Db, tx: &'a Transaction<'c>) -> Self {
        Self { db, tx }
    }

    async fn statement(&self, sql: &str, op: &'static str) -> Result<Statement, DbError> {
        self.db.prepare(self.tx, sql, op).await
    }

    /// Starts a binary COPY (`sql` is `COPY ... FROM STDIN (FORMAT binary)`) of rows of `types`;
    /// the caller pins the writer, writes the rows and finishes it.
    pub async fn copy_in(
        &self,
        sql: &str,
        types: &[Type],
        op: &'static str,
    ) -> Result<BinaryCopyInWriter, DbError> {
        let statement = self.statement(sql, op).await?;
        let sink = self
            .tx
            .copy_in(&statement)
            .await
            .map_err(DbError::query(op))?;
        Ok(BinaryCopyInWriter::new(sink, types))
    }

    /// Starts a COPY (`sql` is `COPY ... FROM STDIN`) whose data the caller sends as it is.
    pub async fn copy_in_raw(
        &self,
        sql: &str,
        op: &'static str,
    ) -> Result<CopyInSink<Bytes>, DbError> {
        let statement = self.statement(sql, op).await?;
        self.tx
            .copy_in(&statement)
            .await
            .map_err(DbError::query(op))
    }

    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        op: &'static str,
    ) -> Result<u64, DbError> {
        let statement = self.statement(sql, op).await?;
        self.tx
            .execute(&statement, params)
            .await
            .map_err(DbError::query(op))
    }

    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        op: &'static str,
    ) -> Result<Vec<Row>, DbError> {
        let statement = self.statement(sql, op).await?;
        self.tx
            .query(&statement, params)
            .await
            .map_err(DbError::query(op))
    }
}
