//! Host sync reports: verify who is reporting, check the report, store it.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::ca;
use crate::clock::unix_secs as unix;
use crate::fleet::{self, HostRow, ReportError};
use crate::store::StoreError;

use super::Service;

/// Why a host report was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostReportError {
    /// The certificate or signature does not prove a host of this CA.
    #[error("host report refused: {0}")]
    Proof(#[from] ca::hostreport::ReportProofError),
    /// The report's content is refused.
    #[error("host report refused: {0}")]
    Report(#[from] ReportError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Service {
    /// Checks a host's signed sync report (`report` is the exact signed
    /// text) and stores it as the host's last report.
    pub async fn host_report(
        &self,
        report: &str,
        certificate: &str,
        signature: &str,
        client_addr: Option<SocketAddr>,
        now: SystemTime,
    ) -> Result<HostRow, HostReportError> {
        let now_s = unix(now);
        let ring = self.host_keys();
        let authorities: Vec<&ca::Authority> = ring.authorities().collect();
        let who = ca::hostreport::verify(
            report.as_bytes(),
            certificate,
            signature,
            &authorities,
            now_s,
        )?;
        let r = fleet::check_report(report, &who.principals, now_s)?;
        let revoked = self
            .store()
            .access()
            .live_revocations(now_s)
            .await?
            .into_iter()
            .any(|v| {
                v.ca_key == who.ca_key
                    && (v.serial == Some(who.serial) || v.key_id.as_deref() == Some(&who.key_id))
            });
        if revoked {
            return Err(ReportError::Revoked(who.serial).into());
        }
        let row = HostRow {
            host: r.host,
            reported_at: r.time,
            krl_version: r.krl_version,
            ca_fingerprints: r.ca_fingerprints,
            last_error: r.last_error,
            cert_serial: who.serial,
            client_addr: client_addr.map(|a| a.to_string()),
        };
        if let Some(last) = self.store().hosts().host_report(row.clone()).await? {
            return Err(ReportError::Older {
                time: row.reported_at,
                last,
            }
            .into());
        }
        tracing::info!(host = %row.host, krl_version = row.krl_version,
            error = row.last_error.as_deref().unwrap_or(""), "host sync report");
        Ok(row)
    }
}
