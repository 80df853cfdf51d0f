//! The read side: DataFusion tables over a [`Snapshot`] (Parquet files + the durable tail).
//!
//! Each table scans its manifest files through DataFusion's Parquet reader (object_store
//! underneath, with row-group pruning from the pushed-down filters) and its tail batches from
//! memory, unioned. No table lists directories, so temp files and orphans are never read.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::SessionContext;

use super::Snapshot;
use crate::model::Table;

/// One stored table as DataFusion sees it.
#[derive(Debug)]
pub struct StoreTable {
    schema: SchemaRef,
    files: Vec<String>,
    tail: Vec<RecordBatch>,
}

impl StoreTable {
    pub fn new(snapshot: &Snapshot, table: Table) -> Self {
        StoreTable {
            schema: table.schema(),
            files: snapshot
                .files_of(table)
                .map(|f| snapshot.dir.join(&f.path).to_string_lossy().into_owned())
                .collect(),
            tail: snapshot.tail_of(table).cloned().collect(),
        }
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Inexact: Parquet prunes row groups with them, DataFusion still filters the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !self.files.is_empty() {
            // File URLs built from paths, never parsed as globs: a data directory named
            // `ws[1]` must not match `ws1`.
            let urls = self
                .files
                .iter()
                .map(|p| {
                    let url = url::Url::from_file_path(p).map_err(|_| {
                        datafusion::error::DataFusionError::Plan(format!(
                            "not an absolute path: {p}"
                        ))
                    })?;
                    ListingTableUrl::try_new(url, None)
                })
                .collect::<DfResult<Vec<_>>>()?;
            let opts = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let cfg = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(opts)
                .with_schema(self.schema.clone());
            let t = ListingTable::try_new(cfg)?;
            plans.push(t.scan(state, projection, filters, limit).await?);
        }
        if !self.tail.is_empty() || plans.is_empty() {
            // Spread the tail's batches over the session's partitions so scans of a large
            // tail (a scratch store holds everything there) run in parallel.
            let n = state.config().target_partitions().max(1);
            let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n.min(self.tail.len().max(1))];
            let len = parts.len();
            for (i, b) in self.tail.iter().enumerate() {
                parts[i % len].push(b.clone());
            }
            let m = MemTable::try_new(self.schema.clone(), parts)?;
            plans.push(m.scan(state, projection, filters, limit).await?);
        }
        UnionExec::try_new(plans)
    }
}

/// Registers every ingest table of the snapshot in `ctx`.
pub fn register(ctx: &SessionContext, snapshot: &Snapshot) -> DfResult<()> {
    for t in Table::ALL {
        ctx.register_table(t.name(), Arc::new(StoreTable::new(snapshot, t)))?;
    }
    Ok(())
}
