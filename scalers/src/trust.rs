//! What a trigger would do with what ebb holds, and where ebb's own identity may go.
//!
//! Trigger metadata is untrusted: it comes from whoever can write a ScaledObject or reach ebb's
//! port. A parsed trigger therefore declares every use of something ebb holds ([`Held`]): its
//! Azure identity (towards which service, host, entity and token audience) and named secrets.
//! The engine checks each declaration against the operator's policy before the trigger is
//! accepted: [`Endpoints::check`] here (hosts and audiences), and the namespace bindings in the
//! engine. A secret the caller supplied itself (a connection string in the metadata) is not held
//! by ebb and goes where the caller says, as with KEDA's built-in scalers.

use url::{Host, Url};

use crate::ConfigError;

/// An Azure service ebb's identity may be used towards. Event Hubs shares Service Bus's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AzureService {
    /// `<namespace>.servicebus.windows.net` (Service Bus and Event Hubs).
    ServiceBus,
    /// `<account>.{queue,blob}.core.windows.net`.
    Storage,
    /// Azure Monitor managed Prometheus: `<workspace>.<region>.prometheus.monitor.azure.com`.
    Monitor,
}

impl AzureService {
    pub const ALL: [AzureService; 3] = [AzureService::ServiceBus, AzureService::Storage, AzureService::Monitor];

    /// The name used in flags and the access policy.
    pub fn name(self) -> &'static str {
        match self {
            AzureService::ServiceBus => "servicebus",
            AzureService::Storage => "storage",
            AzureService::Monitor => "monitor",
        }
    }

    pub fn from_name(s: &str) -> Option<AzureService> {
        Self::ALL.into_iter().find(|x| x.name().eq_ignore_ascii_case(s))
    }

    /// The host suffixes of the public and sovereign clouds (KEDA's
    /// `azure_cloud_environment.go`, and Azure Monitor's managed Prometheus endpoints).
    pub fn cloud_suffixes(self) -> &'static [&'static str] {
        match self {
            AzureService::ServiceBus => {
                &["servicebus.windows.net", "servicebus.usgovcloudapi.net", "servicebus.chinacloudapi.cn"]
            }
            AzureService::Storage => &["core.windows.net", "core.usgovcloudapi.net", "core.chinacloudapi.cn"],
            AzureService::Monitor => {
                &["prometheus.monitor.azure.com", "prometheus.monitor.azure.us", "prometheus.monitor.azure.cn"]
            }
        }
    }

    /// The token audiences (scopes) ebb asks for towards this service. Fixed: never taken from
    /// metadata (Monitor may add operator-approved ones, see [`Endpoints`]).
    pub fn audiences(self) -> &'static [&'static str] {
        match self {
            AzureService::ServiceBus => {
                &["https://servicebus.azure.net/.default", "https://eventhubs.azure.net/.default"]
            }
            AzureService::Storage => &["https://storage.azure.com/.default"],
            AzureService::Monitor => &[
                "https://prometheus.monitor.azure.com/.default",
                "https://prometheus.monitor.azure.us/.default",
                "https://prometheus.monitor.azure.cn/.default",
            ],
        }
    }
}

/// One use of ebb's own Azure identity by a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityUse {
    pub service: AzureService,
    /// Where the token is sent (scheme, host; the path does not matter), as the poller will
    /// parse it.
    pub url: String,
    /// What is read there: queue, `topic/subscription`, hub or blob container ("" for Monitor).
    pub entity: String,
    /// The token scope.
    pub audience: String,
    /// The metadata key that chose the host, for errors.
    pub host_key: &'static str,
    /// The metadata key that chose the audience, when metadata did (Prometheus).
    pub audience_key: Option<&'static str>,
}

impl IdentityUse {
    /// The host the token would go to, as parsed ("" when `url` does not parse).
    pub fn host(&self) -> String {
        Url::parse(&self.url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// Something ebb holds that a trigger would use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Identity(IdentityUse),
    /// A named secret from ebb's secrets directory (`connectionRef: <name>`); `key` is the
    /// metadata key that named it.
    NamedSecret {
        name: String,
        key: String,
    },
}

/// Hosts and audiences the operator approved for ebb's identity beyond the clouds' own
/// (`ebb serve --azure-private-suffix`, `--azure-monitor-audience`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// `(service, suffix)`: a private cloud's (Azure Stack Hub's) endpoint suffixes.
    pub private_suffixes: Vec<(AzureService, String)>,
    /// Azure Monitor resource URLs (`azureManagedPrometheusResourceURL`) besides the clouds'.
    pub monitor_audiences: Vec<String>,
}

impl Endpoints {
    /// Parses `SERVICE=SUFFIX` (`--azure-private-suffix`).
    pub fn parse_private_suffix(s: &str) -> Result<(AzureService, String), String> {
        let (service, suffix) = s.split_once('=').ok_or_else(|| format!("{s:?} is not SERVICE=SUFFIX"))?;
        let service = AzureService::from_name(service.trim())
            .ok_or_else(|| format!("{service:?} is not a service (servicebus, storage, monitor)"))?;
        let suffix = suffix.trim().trim_start_matches('.').to_ascii_lowercase();
        if !is_dns_name(&suffix) || !suffix.contains('.') {
            return Err(format!("{suffix:?} is not a DNS suffix of at least two labels"));
        }
        Ok((service, suffix))
    }

    /// Parses an Azure Monitor resource URL (`--azure-monitor-audience`): an https URL, kept as
    /// given.
    pub fn parse_monitor_audience(s: &str) -> Result<String, String> {
        let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if url.scheme() != "https" || !matches!(url.host(), Some(Host::Domain(_))) {
            return Err(format!("{s:?} must be an https URL with a host name"));
        }
        Ok(s.to_string())
    }

    fn suffixes(&self, service: AzureService) -> impl Iterator<Item = &str> {
        service
            .cloud_suffixes()
            .iter()
            .copied()
            .chain(self.private_suffixes.iter().filter(move |(s, _)| *s == service).map(|(_, suffix)| suffix.as_str()))
    }

    /// Checks one identity use: the host must be an approved service host and the audience the
    /// service's own. The error names the metadata key at fault.
    pub fn check(&self, u: &IdentityUse) -> Result<(), ConfigError> {
        let suffixes: Vec<&str> = self.suffixes(u.service).collect();
        let url = Url::parse(&u.url).map_err(|_| format!("{:?} is not a URL", u.url));
        url.and_then(|url| check_host(&url, &suffixes)).map_err(|reason| {
            ConfigError::new(
                u.host_key,
                format!("ebb's Azure identity is only sent to {} hosts: {reason}", u.service.name()),
            )
        })?;
        let approved = u.service.audiences().iter().any(|a| *a == u.audience)
            || (u.service == AzureService::Monitor && self.monitor_audiences.contains(&u.audience));
        if !approved {
            return Err(ConfigError::new(
                u.audience_key.unwrap_or(u.host_key),
                format!(
                    "is not an Azure Monitor resource URL this ebb accepts ({}; the operator can add one with \
                     ebb serve --azure-monitor-audience)",
                    u.service.audiences().join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// `url` is `https://<labels>.<suffix>` for one of `suffixes`: no user info, no port, no IP
/// literal, no trailing dot, ASCII labels only (no IDN), matched on the parsed host.
pub fn check_host(url: &Url, suffixes: &[&str]) -> Result<(), String> {
    if url.scheme() != "https" {
        return Err(format!("{}: https only", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL with user info".into());
    }
    if url.port().is_some() {
        return Err("an explicit port".into());
    }
    let host = match url.host() {
        Some(Host::Domain(h)) => h,
        Some(_) => return Err("an IP address".into()),
        None => return Err("no host".into()),
    };
    if !is_dns_name(host) {
        return Err(format!("{host:?} is not a plain DNS name"));
    }
    let approved = suffixes
        .iter()
        .any(|s| host.len() > s.len() + 1 && host.ends_with(s) && host.as_bytes()[host.len() - s.len() - 1] == b'.');
    if approved { Ok(()) } else { Err(format!("{host:?} is not under {}", suffixes.join(", "))) }
}

/// Lower-case ASCII labels of letters, digits and '-', none empty, none an IDN (`xn--`) label,
/// no trailing dot.
fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with("xn--")
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Checked again right before a token is requested, whatever the engine checked: the token
/// goes over https to a DNS host, with no user info and no port.
pub fn check_token_target(url: &Url) -> Result<(), crate::PollError> {
    let ok = url.scheme() == "https"
        && url.username().is_empty()
        && url.password().is_none()
        && url.port().is_none()
        && matches!(url.host(), Some(Host::Domain(h)) if is_dns_name(h));
    if ok {
        Ok(())
    } else {
        Err(crate::PollError::Credential("ebb's identity is only sent over https to a service host name".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(url: &str) -> IdentityUse {
        IdentityUse {
            service: AzureService::ServiceBus,
            url: url.into(),
            entity: "q".into(),
            audience: "https://servicebus.azure.net/.default".into(),
            host_key: "namespace",
            audience_key: None,
        }
    }

    /// Issue 13: host tricks never pass; the clouds' own hosts do.
    #[test]
    fn only_approved_service_hosts_pass() {
        let e = Endpoints::default();
        for ok in [
            "https://ns.servicebus.windows.net",
            "https://NS.ServiceBus.Windows.Net/", // the URL parser lower-cases hosts: same host
            "https://ns.servicebus.usgovcloudapi.net/q",
            "https://ns.servicebus.windows.net:443/", // the default port is the same address
        ] {
            assert!(e.check(&sb(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "http://ns.servicebus.windows.net",
            "https://ns.servicebus.windows.net@evil.example",
            "https://user@ns.servicebus.windows.net",
            "https://ns.servicebus.windows.net.evil.example",
            "https://ns.servicebus.windows.net./",
            "https://servicebus.windows.net",
            "https://nsservicebus.windows.net",
            "https://ns.servicebus.windows.net:8443",
            "https://ns%2eservicebus.windows.net.evil.example",
            "https://127.0.0.1",
            "https://[::1]",
            "https://xn--n-0fa.servicebus.windows.net",
            "https://ñs.servicebus.windows.net",
            "https://ns.core.windows.net",
            "https://evil.example/?x=.servicebus.windows.net",
        ] {
            let err = e.check(&sb(bad)).unwrap_err();
            assert_eq!(err.key, "namespace", "{bad}");
        }
    }

    #[test]
    fn private_suffixes_only_when_approved() {
        let u = sb("https://ns.sb.stack.contoso.example");
        assert!(Endpoints::default().check(&u).is_err());
        let e = Endpoints {
            private_suffixes: vec![Endpoints::parse_private_suffix("servicebus=.sb.stack.contoso.example").unwrap()],
            ..Default::default()
        };
        assert!(e.check(&u).is_ok());
        // Approved for Service Bus, not for Storage.
        let mut s = sb("https://acct.queue.sb.stack.contoso.example/q");
        s.service = AzureService::Storage;
        s.audience = "https://storage.azure.com/.default".into();
        assert!(e.check(&s).is_err());
        for bad in ["servicebus", "vault=x.example", "servicebus=localhost", "storage=1.2.3.4.", "monitor=a..b"] {
            assert!(Endpoints::parse_private_suffix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn audiences_are_fixed_unless_the_operator_adds_one() {
        let mut u = IdentityUse {
            service: AzureService::Monitor,
            url: "https://ws-1.eastus.prometheus.monitor.azure.com".into(),
            entity: String::new(),
            audience: "https://prometheus.monitor.azure.com/.default".into(),
            host_key: "serverAddress",
            audience_key: Some("azureManagedPrometheusResourceURL"),
        };
        assert!(Endpoints::default().check(&u).is_ok());
        for other in ["https://vault.azure.net/.default", "https://management.azure.com/.default", "https://x/.default"]
        {
            u.audience = other.into();
            let err = Endpoints::default().check(&u).unwrap_err();
            assert_eq!(err.key, "azureManagedPrometheusResourceURL");
        }
        let e = Endpoints {
            monitor_audiences: vec![Endpoints::parse_monitor_audience("https://x/.default").unwrap()],
            ..Default::default()
        };
        assert!(e.check(&u).is_ok());
        assert!(Endpoints::parse_monitor_audience("http://x/.default").is_err());
        // A Service Bus use never takes a Monitor audience, approved or not.
        let mut s = sb("https://ns.servicebus.windows.net");
        s.audience = "https://x/.default".into();
        assert!(e.check(&s).is_err());
    }

    #[test]
    fn token_targets_are_checked_again() {
        assert!(check_token_target(&Url::parse("https://ns.servicebus.windows.net/q").unwrap()).is_ok());
        for bad in ["http://ns.servicebus.windows.net", "https://127.0.0.1", "https://a:1", "https://u@a.b"] {
            assert!(check_token_target(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
