//! `POST /v1/hosts/report`: a host's signed sync report (`mayfly host sync`).
//!
//! No bearer token: the proof is an SSH signature by the host key whose
//! certificate this CA issued, over the exact report text (see
//! [`crate::ca::hostreport`]). Anonymous or forged reports are refused.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{read_json, AppState};
use crate::fleet::ReportError;
use crate::service::HostReportError;

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    /// The report as JSON text: exactly the signed bytes.
    report: String,
    /// The host certificate (OpenSSH line) this CA issued.
    certificate: String,
    /// Armored SSHSIG (namespace `host-report@mayfly`) over `report`.
    signature: String,
}

/// The answer: what was stored and the CA's KRL version, so the host can
/// tell whether it is behind.
#[derive(Serialize)]
struct ReportAnswer {
    host: String,
    krl_version: u64,
    ca_krl_version: u64,
}

/// Stores a host's report.
pub(super) async fn report(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: ReportBody = read_json(body, "{\"report\", \"certificate\", \"signature\"}")?;
    let now = s.service.clock().now();
    let row = s
        .service
        .host_report(&b.report, &b.certificate, &b.signature, Some(addr), now)
        .await?;
    let ca = s.service.store().access().state_version().await?;
    let answer = ReportAnswer {
        host: row.host,
        krl_version: row.krl_version,
        ca_krl_version: ca.version,
    };
    Ok(Json(serde_json::to_value(answer).unwrap_or_default()))
}

impl From<HostReportError> for ApiError {
    fn from(e: HostReportError) -> Self {
        let msg = e.to_string();
        match e {
            HostReportError::Proof(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_host_proof", msg)
            }
            HostReportError::Report(r) => match r {
                ReportError::Malformed(_) | ReportError::Bounds(_) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg)
                }
                ReportError::Stale { .. } => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "stale_report", msg)
                }
                ReportError::Older { .. } => {
                    ApiError::new(StatusCode::CONFLICT, "older_report", msg)
                }
                ReportError::OtherHost { .. } => {
                    ApiError::new(StatusCode::FORBIDDEN, "other_host", msg)
                }
                ReportError::Revoked(_) => {
                    ApiError::new(StatusCode::FORBIDDEN, "host_cert_revoked", msg)
                }
            },
            HostReportError::Store(se) => ApiError::store_unavailable(
                &se,
                "host report not stored",
                "the store is unavailable; the report was not stored, the next sync reports again",
            ),
        }
    }
}
