//! The sites' certificates, parsed with `x509-parser` (rustls checks only
//! that a certificate and its key belong together): expired or not yet
//! valid (anywhere in the chain), expiring within [`EXPIRY_DAYS`] days, a
//! site host name its leaf does not cover (by its subject alternative
//! names, as browsers match them: the common name is ignored, a wildcard
//! stands for one whole left-most label), and MD5 or SHA-1 signatures.

use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

use super::{Context, Finding, Place, Severity};

/// A certificate that expires within this many days is a finding: an ACME
/// client renews at 30 days left, so one this close has stopped renewing.
pub const EXPIRY_DAYS: i64 = 30;

/// Signature algorithms clients refuse (by OID): MD5 and SHA-1 with RSA,
/// ECDSA with SHA-1, DSA with SHA-1.
const WEAK_SIGNATURES: &[(&str, &str)] = &[
    ("1.2.840.113549.1.1.4", "MD5 with RSA"),
    ("1.2.840.113549.1.1.5", "SHA-1 with RSA"),
    ("1.2.840.10045.4.1", "ECDSA with SHA-1"),
    ("1.2.840.10040.4.3", "DSA with SHA-1"),
];

pub(super) fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for t in &ctx.cfg.tenants {
        for site in &t.sites {
            let Some(tls) = &site.tls else { continue };
            let ders: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&tls.cert_pem)
                .filter_map(Result::ok)
                .collect();
            let finding = |severity, check, what: String, fix: String| Finding {
                severity,
                check,
                place: Place::path(&tls.cert),
                tenant: Some(t.name.clone()),
                what,
                fix,
            };
            let renew = format!(
                "renew it (certbot renew, or your ACME client) and reload berth (kill -HUP; berth ctl reload), covering {}",
                site.hosts.join(", ")
            );
            for (i, der) in ders.iter().enumerate() {
                let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                    continue;
                };
                let which = if i == 0 {
                    format!("the certificate of {}", site.hosts[0])
                } else {
                    format!(
                        "certificate {} of the chain of {} ({})",
                        i + 1,
                        site.hosts[0],
                        cert.subject()
                    )
                };
                let validity = cert.validity();
                let (from, until) = (validity.not_before, validity.not_after);
                let (from_date, until_date) = (date(from.timestamp()), date(until.timestamp()));
                if until.timestamp() < ctx.now {
                    out.push(finding(
                        Severity::High,
                        "cert-expired",
                        format!("{which} expired on {until_date}: clients refuse it (or teach users to click through)"),
                        renew.clone(),
                    ));
                } else if from.timestamp() > ctx.now {
                    out.push(finding(
                        Severity::High,
                        "cert-expired",
                        format!("{which} is not valid before {from_date}: clients refuse it"),
                        renew.clone(),
                    ));
                } else if until.timestamp() - ctx.now < EXPIRY_DAYS * 86_400 {
                    let days = (until.timestamp() - ctx.now) / 86_400;
                    out.push(finding(
                        Severity::Medium,
                        "cert-expiring",
                        format!(
                            "{which} expires on {until_date}, in {days} days (less than {EXPIRY_DAYS}): its renewal is not happening"
                        ),
                        renew.clone(),
                    ));
                }
                let self_signed = cert.subject() == cert.issuer();
                let oid = cert.signature_algorithm.algorithm.to_id_string();
                if let Some((_, name)) = WEAK_SIGNATURES.iter().find(|(o, _)| *o == oid)
                    && (i == 0 || !self_signed)
                {
                    out.push(finding(
                        Severity::Medium,
                        "cert-signature",
                        format!("{which} is signed with {name}, which clients no longer accept (signatures can be forged)"),
                        renew.clone(),
                    ));
                }
                if i > 0 {
                    continue;
                }
                let names = san_names(&cert);
                for host in &site.hosts {
                    if !names.iter().any(|n| covers(n, host)) {
                        let listed = if names.is_empty() {
                            "no subject alternative name".to_string()
                        } else {
                            names.join(", ")
                        };
                        out.push(finding(
                            Severity::Medium,
                            "cert-host",
                            format!(
                                "{which} does not cover {host} (it names {listed}): clients refuse the site under that name"
                            ),
                            renew.clone(),
                        ));
                    }
                }
            }
        }
    }
}

/// A time as `2026-12-01 10:00:00 UTC`.
fn date(secs: i64) -> String {
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => format!("{secs} s after the epoch"),
    }
}

/// A certificate's DNS names (lowercase) and IP addresses, as written.
fn san_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whether the name `san` of a certificate covers `host` (lowercase), as
/// clients match (RFC 6125): equal, or `*.rest` where `host` is one more
/// label and `rest` (a name of two labels at least).
pub fn covers(san: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let san = san.trim_end_matches('.');
    if san == host {
        return true;
    }
    let Some(rest) = san.strip_prefix("*.") else {
        return false;
    };
    rest.contains('.')
        && host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("a.test", "a.test"));
        assert!(covers("*.a.test", "www.a.test"));
        assert!(!covers("*.a.test", "a.test"));
        assert!(!covers("*.a.test", "x.www.a.test"));
        assert!(
            !covers("*.test", "a.test"),
            "a wildcard over a top-level name"
        );
        assert!(!covers("w*.a.test", "www.a.test"));
        assert!(covers("127.0.0.1", "127.0.0.1"));
    }
}
