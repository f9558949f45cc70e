//! A batch's transaction with the pool it came from: its statements come from the connection's
//! statement cache ([`Db::prepare`]), so after a connection's first batch a COPY costs two round
//! trips (start, finish) and a statement one, none of them parsed again; and a step whose answer
//! can wait ([`Unsettled`]) shares its round trip with the start of the next.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use deadpool_postgres::Transaction;
use shared::db::{Db, DbError};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CopyInSink, Row, Statement};

type Answer<'a> = Pin<Box<dyn Future<Output = Result<(), DbError>> + Send + 'a>>;

/// A step of the transaction whose request is on the wire and whose answer is not awaited yet:
/// a statement, or the end of a COPY. The next step's request follows it at once, and both
/// answers are awaited together ([`Unsettled::then`]); the commit awaits the last one. A batch's
/// steps thus share round trips: the entry locks with the start of the first COPY, the end of
/// one COPY with the start of the next, the end of the last with `COMMIT`.
///
/// Order is kept by the connection: requests go out in the order they are first polled, and the
/// one that follows the end of a COPY goes out after it. Nothing else may be awaited on the
/// connection while a step is unsettled (its answer would wait behind one nobody reads): await
/// the next request through [`Unsettled::then`], or [`Unsettled::settle`] first. An error is
/// reported in wire order: a step's own before the refusal of what follows it in its aborted
/// transaction.
#[must_use = "an unsettled step must be settled or passed on"]
pub struct Unsettled<'a>(Option<Answer<'a>>);

impl<'a> Unsettled<'a> {
    /// Nothing in flight.
    pub fn settled() -> Self {
        Self(None)
    }

    /// Sends `step`'s request by polling it once; `step` must send it on its first poll (a
    /// statement already prepared, the end of a COPY).
    pub async fn start(step: impl Future<Output = Result<(), DbError>> + Send + 'a) -> Self {
        let mut step: Answer<'a> = Box::pin(step);
        match futures::poll!(step.as_mut()) {
            Poll::Ready(Ok(())) => Self(None),
            Poll::Ready(Err(e)) => Self(Some(Box::pin(async move { Err(e) }))),
            Poll::Pending => Self(Some(step)),
        }
    }

    /// Awaits the step's answer.
    pub async fn settle(self) -> Result<(), DbError> {
        match self.0 {
            Some(answer) => answer.await,
            None => Ok(()),
        }
    }

    /// Sends `next` right behind the step and awaits both answers; the step's error first.
    pub async fn then<T>(
        self,
        next: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        let (first, next) = futures::join!(self.settle(), next);
        first.and(next)
    }
}

/// The end of a COPY whose rows the caller encoded, sent now and settled with the next step.
pub async fn end_copy_unsettled(
    mut sink: Pin<Box<CopyInSink<Bytes>>>,
    op: &'static str,
) -> Unsettled<'static> {
    Unsettled::start(async move {
        sink.as_mut().finish().await.map_err(DbError::query(op))?;
        Ok(())
    })
    .await
}

/// The end of a binary COPY, sent now and settled with the next step.
pub async fn finish_unsettled(
    mut writer: Pin<Box<BinaryCopyInWriter>>,
    op: &'static str,
) -> Unsettled<'static> {
    Unsettled::start(async move {
        writer.as_mut().finish().await.map_err(DbError::query(op))?;
        Ok(())
    })
    .await
}

pub struct Tx<'a, 'c> {
    db: &'a Db,
    tx: &'a Transaction<'c>,
}

impl<'a, 'c> Tx<'a, 'c> {
    pub fn new(db: &'a Db, tx: &'a Transaction<'c>) -> Self {
        Self { db, tx }
    }

    /// `sql` prepared (from the connection's statement cache).
    pub async fn statement(&self, sql: &str, op: &'static str) -> Result<Statement, DbError> {
        self.db.prepare(self.tx, sql, op).await
    }

    /// Sends `statement` (prepared) now; its answer is settled with the next step.
    pub async fn send(
        &self,
        statement: Statement,
        params: Vec<Box<dyn ToSql + Send + Sync + 'a>>,
        op: &'static str,
    ) -> Unsettled<'a> {
        let tx = self.tx;
        Unsettled::start(async move {
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            tx.execute(&statement, &params)
                .await
                .map_err(DbError::query(op))?;
            Ok(())
        })
        .await
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
