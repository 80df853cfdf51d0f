//! Arrow Flight SQL on its own port, read-only, for BI tools and Grafana's Flight SQL data
//! source (`serve --flight-listen ADDR`; over TLS with the HTTP certificate when HTTPS is on).
//!
//! The same guard as `POST /api/v1/sql`: the bearer token of every call (the `authorization`
//! metadata; no handshake needed) checked against the API's tokens, each statement planned
//! and checked by `query::plan_readonly` at prepare time (so a refused one fails before
//! anything runs), results capped at `sql_row_limit` rows and run on the query runtime under
//! the same timeout and concurrency caps. ADBC's `cursor.execute` prepares, gets the flight
//! info and fetches; a prepared statement's handle is its SQL text (nothing is kept on the
//! server). Catalog calls list the session's tables (catalog `datafusion`, schema `public`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::{ApiError, App, Caller};

const CATALOG: &str = "datafusion";
const SCHEMA: &str = "public";

#[derive(Clone)]
struct Svc {
    app: Arc<App>,
    sql_info: Arc<SqlInfoData>,
}

fn status(e: ApiError) -> Status {
    match &e {
        ApiError::BadParam { .. } => Status::invalid_argument(e.to_string()),
        ApiError::Unauthorized => Status::unauthenticated(e.to_string()),
        ApiError::Forbidden(_) => Status::permission_denied(e.to_string()),
        ApiError::NotFound(_) => Status::not_found(e.to_string()),
        ApiError::TooMany(_) | ApiError::Resources(_) => Status::resource_exhausted(e.to_string()),
        ApiError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        ApiError::Internal(_) => Status::internal(e.to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

type Stream_ = <Svc as FlightService>::DoGetStream;

impl Svc {
    #[allow(clippy::result_large_err)]
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let now = self.app.clock.now_ms();
        let key = req.remote_addr().map(|a| super::brake_key(a.ip()));
        if let Some(k) = key
            && self.app.brake.blocked(k, now)
        {
            self.app.metrics.auth_failures.inc();
            return Err(Status::resource_exhausted(
                "too many failed authentications from this address; wait a minute",
            ));
        }
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let found = token.and_then(|t| self.app.check_token(t));
        match (token, found) {
            (_, Some(c)) => Ok(c),
            (given, None) => {
                // Only a wrong token is a guess; a missing one is just refused.
                if let (Some(_), Some(k)) = (given, key) {
                    self.app.brake.failed(k, now);
                }
                self.app.metrics.auth_failures.inc();
                Err(Status::unauthenticated(
                    "a bearer token is required (authorization: Bearer <token>; `wallscope token create` makes one)",
                ))
            }
        }
    }

    /// Plans `sql` (refusing anything but a query) and returns its result schema. A plan
    /// that fails is counted (refused or failed); one that succeeds is counted when it runs.
    async fn plan(&self, caller: &Caller, sql: String) -> Result<Arc<Schema>, Status> {
        let app = self.app.clone();
        let r = self
            .app
            .run(caller, async move {
                let snap = app.snapshot()?;
                let ctx = app.user_session(&snap)?;
                let plan = crate::query::plan_readonly(&ctx, &sql).await?;
                Ok(Arc::new(plan.schema().as_arrow().clone()))
            })
            .await;
        match r {
            Ok(v) => Ok(v),
            Err(e) => self.count(Err(e)),
        }
    }

    async fn execute(&self, caller: &Caller, sql: String) -> Result<Stream_, Status> {
        let app = self.app.clone();
        let limit = self.app.limits.sql_row_limit;
        let r = self
            .app
            .run(caller, async move {
                let snap = app.snapshot()?;
                let ctx = app.user_session(&snap)?;
                Ok(crate::query::run_limited(&ctx, &sql, limit, 256 << 20).await?)
            })
            .await;
        let r = self.count(r)?;
        let schema = match r.batches.first() {
            Some(b) => b.schema(),
            None => Arc::new(Schema::empty()),
        };
        Ok(stream(schema, r.batches))
    }

    /// Counts a query's outcome like the HTTP endpoint does.
    #[allow(clippy::result_large_err)]
    fn count<T>(&self, r: Result<T, ApiError>) -> Result<T, Status> {
        match r {
            Ok(v) => {
                self.app.metrics.sql_ok.inc();
                Ok(v)
            }
            Err(e) => {
                if matches!(&e, ApiError::BadParam { message, .. } if message.starts_with("refused"))
                {
                    self.app.metrics.sql_rejected.inc();
                } else {
                    self.app.metrics.sql_failed.inc();
                }
                Err(status(e))
            }
        }
    }

    /// The session's tables with their schemas.
    async fn tables(&self, caller: &Caller) -> Result<Vec<(String, Arc<Schema>)>, Status> {
        let app = self.app.clone();
        self.app
            .run(caller, async move {
                let snap = app.snapshot()?;
                let ctx = crate::query::session(&snap, &app.query_config())?;
                let mut out = Vec::new();
                let names = ctx
                    .catalog(CATALOG)
                    .and_then(|c| c.schema(SCHEMA))
                    .map(|s| s.table_names())
                    .unwrap_or_default();
                for name in names {
                    let df = ctx
                        .table(name.as_str())
                        .await
                        .map_err(super::datafusion_error)?;
                    out.push((name, Arc::new(df.schema().as_arrow().clone())));
                }
                out.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(out)
            })
            .await
            .map_err(status)
    }
}

fn stream(schema: Arc<Schema>, batches: Vec<RecordBatch>) -> Stream_ {
    let s = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Box::pin(s)
}

fn info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(internal)?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor))
}

#[allow(clippy::result_large_err)]
fn sql_of(handle: &[u8]) -> Result<String, Status> {
    String::from_utf8(handle.to_vec())
        .map_err(|_| Status::invalid_argument("not a statement handle of this server"))
}

#[tonic::async_trait]
impl FlightSqlService for Svc {
    type FlightService = Svc;

    /// Clients that authenticate by handshake get their bearer token echoed back.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        self.caller(&request)?;
        let header = request
            .metadata()
            .get("authorization")
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no token"))?;
        let out = futures::stream::iter(vec![Ok(HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        })]);
        let mut resp: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(out));
        resp.metadata_mut().insert("authorization", header);
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let c = self.caller(&request)?;
        let schema = self.plan(&c, query.query.clone()).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into(),
        };
        Ok(Response::new(info(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<Stream_>, Status> {
        let c = self.caller(&request)?;
        let sql = sql_of(&ticket.statement_handle)?;
        Ok(Response::new(self.execute(&c, sql).await?))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let c = self.caller(&request)?;
        let schema = self.plan(&c, query.query.clone()).await?;
        let IpcMessage(schema_bytes) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| internal(e))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.caller(&request)?;
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let c = self.caller(&request)?;
        let schema = self
            .plan(&c, sql_of(&cmd.prepared_statement_handle)?)
            .await?;
        Ok(Response::new(info(
            &schema,
            cmd.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<Stream_>, Status> {
        let c = self.caller(&request)?;
        let sql = sql_of(&cmd.prepared_statement_handle)?;
        Ok(Response::new(self.execute(&c, sql).await?))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<Stream_>, Status> {
        self.caller(&request)?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        let batch = b.build().map_err(Status::from)?;
        Ok(Response::new(stream(batch.schema(), vec![batch])))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<Stream_>, Status> {
        self.caller(&request)?;
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        let batch = b.build().map_err(Status::from)?;
        Ok(Response::new(stream(batch.schema(), vec![batch])))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<Stream_>, Status> {
        let c = self.caller(&request)?;
        let tables = self.tables(&c).await?;
        let mut b = query.into_builder();
        for (name, schema) in &tables {
            b.append(CATALOG, SCHEMA, name, "TABLE", schema)
                .map_err(Status::from)?;
        }
        let batch = b.build().map_err(Status::from)?;
        Ok(Response::new(stream(batch.schema(), vec![batch])))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        Ok(Response::new(info(
            &schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<Stream_>, Status> {
        self.caller(&request)?;
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(Status::from)?;
        Ok(Response::new(stream(batch.schema(), vec![batch])))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Binds `listen` and serves Flight SQL over `app` until `stop` fires; over TLS with the
/// HTTP server's certificate when one is configured.
pub(crate) async fn start(
    app: Arc<App>,
    listen: SocketAddr,
    tls: Option<&super::TlsFiles>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), super::ServeError> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "wallscope");
    b.append(SqlInfo::FlightSqlServerVersion, crate::version());
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    let sql_info = Arc::new(
        b.build()
            .map_err(|e| super::ServeError::Io(std::io::Error::other(e.to_string())))?,
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| super::ServeError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let svc = Svc { app, sql_info };
    let mut builder = Server::builder();
    if let Some(t) = tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| super::ServeError::Tls(format!("{}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| super::ServeError::Tls(format!("Flight SQL: {e}")))?;
    }
    let task = tokio::spawn(async move {
        let r = builder
            .add_service(FlightServiceServer::new(svc))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stop.await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!("Flight SQL server: {e}");
        }
    });
    Ok((addr, task))
}
