//! [`DisableTarget`]: what a deactivation names. A whole role, or an
//! identity in every role or in one. The stored and wire form is three
//! strings (`issuer`, `subject`, `role`) with `""` for "not named"; that
//! encoding lives here and in the backend's columns only, so nothing else
//! tests strings for emptiness to learn what was disabled.

use serde::ser::SerializeStruct as _;
use serde::{Serialize, Serializer};

/// What is disabled: a whole role, or an identity (optionally for one role).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DisableTarget {
    /// Every identity in this role.
    Role(String),
    /// One identity: in every role (`role: None`) or in one role.
    Identity {
        /// Issuer name (`[[issuer]] name`).
        issuer: String,
        /// Token subject.
        subject: String,
        /// Only this role; `None`: every role.
        role: Option<String>,
    },
}

/// Why a deactivation target is not one. The messages name the CLI flags
/// (`mayfly identity disable`); the admin API uses the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DisableTargetError {
    /// Neither a role nor a whole identity.
    #[error("name an identity (--issuer and --subject) or a role (--role)")]
    Nothing,
    /// A role with only one of issuer and subject.
    #[error("--issuer and --subject go together")]
    HalfIdentity,
}

fn named(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl DisableTarget {
    /// The target named by optional `issuer`, `subject` and `role`, as the
    /// CLI flags and the admin API body give them (an empty string names
    /// nothing, as in the stored form).
    pub fn from_parts(
        issuer: Option<String>,
        subject: Option<String>,
        role: Option<String>,
    ) -> Result<DisableTarget, DisableTargetError> {
        match (named(issuer), named(subject), named(role)) {
            (Some(issuer), Some(subject), role) => Ok(DisableTarget::Identity {
                issuer,
                subject,
                role,
            }),
            (None, None, Some(role)) => Ok(DisableTarget::Role(role)),
            (None, None, None) | (_, _, None) => Err(DisableTargetError::Nothing),
            (_, _, Some(_)) => Err(DisableTargetError::HalfIdentity),
        }
    }

    /// The stored form: `(issuer, subject, role)`, `""` where not named.
    pub fn columns(&self) -> (&str, &str, &str) {
        match self {
            DisableTarget::Role(role) => ("", "", role),
            DisableTarget::Identity {
                issuer,
                subject,
                role,
            } => (issuer, subject, role.as_deref().unwrap_or("")),
        }
    }

    /// Reads the stored form back (see [`DisableTarget::columns`]).
    pub fn from_columns(
        issuer: String,
        subject: String,
        role: String,
    ) -> Result<DisableTarget, DisableTargetError> {
        DisableTarget::from_parts(Some(issuer), Some(subject), Some(role))
    }

    /// The issuer of an identity target.
    pub fn issuer(&self) -> Option<&str> {
        match self {
            DisableTarget::Role(_) => None,
            DisableTarget::Identity { issuer, .. } => Some(issuer),
        }
    }

    /// The subject of an identity target.
    pub fn subject(&self) -> Option<&str> {
        match self {
            DisableTarget::Role(_) => None,
            DisableTarget::Identity { subject, .. } => Some(subject),
        }
    }

    /// The role, if the target names one.
    pub fn role(&self) -> Option<&str> {
        match self {
            DisableTarget::Role(role) => Some(role),
            DisableTarget::Identity { role, .. } => role.as_deref(),
        }
    }

    /// The live certificates a deactivation of this target revokes.
    pub fn cert_filter(&self) -> super::CertFilter {
        match self {
            DisableTarget::Role(role) => super::CertFilter::Role(role.clone()),
            DisableTarget::Identity {
                issuer,
                subject,
                role,
            } => super::CertFilter::Identity {
                issuer: issuer.clone(),
                subject: subject.clone(),
                role: role.clone(),
            },
        }
    }

    /// What a bot blocked by this deactivation is told, naming the way
    /// back (`mayfly identity enable`).
    pub fn refusal_message(&self) -> String {
        let what = match self {
            DisableTarget::Role(role) => format!("role {role:?} is disabled"),
            DisableTarget::Identity {
                issuer,
                subject,
                role: None,
            } => format!("identity {issuer}/{subject} is disabled"),
            DisableTarget::Identity {
                issuer,
                subject,
                role: Some(role),
            } => format!("identity {issuer}/{subject} is disabled for role {role:?}"),
        };
        format!("{what}; ask the CA operator (`mayfly identity enable`)")
    }

    /// The targets that block `issuer`/`subject` in `role`: the identity
    /// everywhere, the identity in this role, the whole role.
    pub fn blocking(issuer: &str, subject: &str, role: &str) -> [DisableTarget; 3] {
        [
            DisableTarget::Identity {
                issuer: issuer.into(),
                subject: subject.into(),
                role: None,
            },
            DisableTarget::Identity {
                issuer: issuer.into(),
                subject: subject.into(),
                role: Some(role.into()),
            },
            DisableTarget::Role(role.into()),
        ]
    }
}

/// `role R`, `identity I/S`, or `identity I/S in role R`.
impl std::fmt::Display for DisableTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisableTarget::Role(role) => write!(f, "role {role}"),
            DisableTarget::Identity {
                issuer,
                subject,
                role: None,
            } => write!(f, "identity {issuer}/{subject}"),
            DisableTarget::Identity {
                issuer,
                subject,
                role: Some(role),
            } => write!(f, "identity {issuer}/{subject} in role {role}"),
        }
    }
}

/// The wire form: `{"issuer", "subject", "role"}` with `""` where not named
/// (the admin API and `--json` output always had this shape).
impl Serialize for DisableTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (issuer, subject, role) = self.columns();
        let mut st = s.serialize_struct("DisableTarget", 3)?;
        st.serialize_field("issuer", issuer)?;
        st.serialize_field("subject", subject)?;
        st.serialize_field("role", role)?;
        st.end()
    }
}

/// Reads the wire form back: `issuer`, `subject`, `role`, `""` (or absent)
/// for "not named" (what the admin API answers; `mayfly ... --server`).
impl<'de> serde::Deserialize<'de> for DisableTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Wire {
            #[serde(default)]
            issuer: Option<String>,
            #[serde(default)]
            subject: Option<String>,
            #[serde(default)]
            role: Option<String>,
        }
        let w = Wire::deserialize(d)?;
        DisableTarget::from_parts(w.issuer, w.subject, w.role).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn parts_name_a_role_or_an_identity() {
        assert_eq!(
            DisableTarget::from_parts(None, None, s("deploy")),
            Ok(DisableTarget::Role("deploy".into()))
        );
        assert_eq!(
            DisableTarget::from_parts(s("ci"), s("repo:a"), s("")),
            Ok(DisableTarget::Identity {
                issuer: "ci".into(),
                subject: "repo:a".into(),
                role: None
            })
        );
        assert_eq!(
            DisableTarget::from_parts(s("ci"), s("repo:a"), s("deploy")).map(|t| t.to_string()),
            Ok("identity ci/repo:a in role deploy".into())
        );
        assert_eq!(
            DisableTarget::from_parts(None, None, None),
            Err(DisableTargetError::Nothing)
        );
        assert_eq!(
            DisableTarget::from_parts(s(""), s(""), s("")),
            Err(DisableTargetError::Nothing)
        );
        assert_eq!(
            DisableTarget::from_parts(s("ci"), None, None),
            Err(DisableTargetError::Nothing)
        );
        assert_eq!(
            DisableTarget::from_parts(s("ci"), None, s("deploy")),
            Err(DisableTargetError::HalfIdentity)
        );
        assert_eq!(
            DisableTarget::from_parts(None, s("repo:a"), s("deploy")),
            Err(DisableTargetError::HalfIdentity)
        );
    }

    #[test]
    fn stored_and_wire_form_round_trip() {
        for t in [
            DisableTarget::Role("deploy".into()),
            DisableTarget::Identity {
                issuer: "ci".into(),
                subject: "repo:a".into(),
                role: None,
            },
            DisableTarget::Identity {
                issuer: "ci".into(),
                subject: "repo:a".into(),
                role: Some("deploy".into()),
            },
        ] {
            let (i, s, r) = t.columns();
            let back = DisableTarget::from_columns(i.into(), s.into(), r.into());
            assert_eq!(back.as_ref(), Ok(&t));
            let json = serde_json::to_value(&t).expect("json");
            assert_eq!(
                json,
                serde_json::json!({"issuer": i, "subject": s, "role": r})
            );
        }
        assert_eq!(
            serde_json::to_string(&DisableTarget::Role("deploy".into())).expect("json"),
            r#"{"issuer":"","subject":"","role":"deploy"}"#
        );
    }
}
