//! Who may use what ebb holds: the operator's access policy (`access:` in `serve --config`).
//!
//! Trigger metadata is untrusted, and the namespace in a request is whatever the caller says. So
//! every use of what ebb holds that a parsed trigger declares ([`Held`]) is checked here before
//! the trigger is accepted:
//! - ebb's Azure identity: only towards approved service hosts with the service's own audience
//!   ([`Endpoints`]), and only for the Azure resources bound to the ScaledObject's namespace;
//! - named secrets (`connectionRef`): only those bound to the namespace;
//! - `authenticationRef` (the namespace's own TriggerAuthentications): only for bound namespaces,
//!   and only when the caller's namespace can be believed: mTLS with KEDA's client certificate,
//!   or `trustCallerNamespace: true` when a NetworkPolicy admits only KEDA.
//!
//! A fresh install binds nothing: ebb serves triggers that bring their own credentials (or none),
//! and refuses its identity, named secrets and `authenticationRef` with an error naming the policy.

use ebb_scalers::ConfigError;
use ebb_scalers::trust::{AzureService, Endpoints, Held, IdentityUse};
use serde::Deserialize;

/// The operator's policy, from `serve --config` (`access:`) and the `--azure-*` flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    pub policy: AccessPolicy,
    /// Hosts and audiences approved beyond the Azure clouds' own.
    pub endpoints: Endpoints,
    /// The gRPC port requires client certificates (mTLS): callers are who the CA says. Set by
    /// [`crate::server::spawn`] from its TLS options.
    pub mtls: bool,
}

/// `access:` in ebb's config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicy {
    /// Believe the namespace a caller names (needed for `authenticationRef`). Set it only when
    /// something admits only KEDA to the gRPC port: a NetworkPolicy your CNI enforces.
    #[serde(default)]
    pub trust_caller_namespace: bool,
    #[serde(default)]
    pub bindings: Vec<Binding>,
}

/// What the namespaces matching `namespaces` may use.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Binding {
    /// Globs (`*` matches any run of characters) on the ScaledObject's namespace.
    pub namespaces: Vec<String>,
    /// Azure resources ebb's identity may be used for.
    #[serde(default)]
    pub identity: Vec<IdentityGrant>,
    /// Named secrets (`connectionRef`) that may be used; globs.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// May read its own TriggerAuthentications through `authenticationRef`.
    #[serde(default)]
    pub authentication_ref: bool,
    /// `policy: drain` may read the ScaledObject's scale target's ready replicas (with
    /// `serve --kube`).
    #[serde(default)]
    pub ready_replicas: bool,
}

/// One Azure resource ebb's identity may be used for.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityGrant {
    /// `servicebus` (Service Bus and Event Hubs), `storage` or `monitor`.
    pub service: String,
    /// Glob on the full host (`contoso-prod.servicebus.windows.net`).
    pub host: String,
    /// Glob on the queue, `topic/subscription`, hub or blob container. A Service Bus regex
    /// trigger reads any entity, so only `*` covers it.
    #[serde(default = "any")]
    pub entity: String,
}

fn any() -> String {
    "*".into()
}

/// Why a use was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The metadata asks for a host or audience no operator approved: INVALID_ARGUMENT.
    #[error(transparent)]
    Metadata(#[from] ConfigError),
    /// The namespace is not bound to what it asked for: PERMISSION_DENIED.
    #[error("{0}")]
    Policy(String),
}

impl AccessPolicy {
    /// Checks the policy's own values (service names) at start-up.
    pub fn validate(&self) -> Result<(), String> {
        for b in &self.bindings {
            if b.namespaces.is_empty() {
                return Err("access.bindings: a binding needs at least one namespace".into());
            }
            for g in &b.identity {
                if AzureService::from_name(&g.service).is_none() {
                    return Err(format!(
                        "access.bindings.identity.service: {:?} is not servicebus, storage or monitor",
                        g.service
                    ));
                }
            }
        }
        Ok(())
    }

    fn bindings_for<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Binding> + 'a {
        self.bindings.iter().filter(move |b| b.namespaces.iter().any(|g| glob(g, namespace)))
    }
}

impl Access {
    /// Checks every use a trigger of `namespace` declares.
    pub fn check(&self, namespace: &str, held: &[Held]) -> Result<(), Refusal> {
        for h in held {
            match h {
                Held::Identity(u) => {
                    self.endpoints.check(u)?;
                    if !self.policy.bindings_for(namespace).any(|b| b.identity.iter().any(|g| grants(g, u))) {
                        return Err(Refusal::Policy(format!(
                            "ebb's access policy does not let namespace {namespace:?} use ebb's Azure identity for \
                             {} {:?}{} (access.bindings[].identity in ebb's config)",
                            u.service.name(),
                            u.host(),
                            if u.entity.is_empty() { String::new() } else { format!(" entity {:?}", u.entity) },
                        )));
                    }
                }
                Held::NamedSecret { name, key } => {
                    if !self.policy.bindings_for(namespace).any(|b| b.secrets.iter().any(|g| glob(g, name))) {
                        return Err(Refusal::Policy(format!(
                            "{key}: ebb's access policy does not let namespace {namespace:?} use the named secret \
                             {name:?} (access.bindings[].secrets in ebb's config)"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// May `namespace` read its own TriggerAuthentications?
    pub fn check_auth_ref(&self, namespace: &str) -> Result<(), Refusal> {
        self.check_kube_read(namespace, "authenticationRef", "TriggerAuthentication", |b| b.authentication_ref)
    }

    /// May `policy: drain` read `namespace`'s ScaledObjects and their scale targets?
    pub fn check_ready_replicas(&self, namespace: &str) -> Result<(), Refusal> {
        self.check_kube_read(namespace, "readyReplicas", "scale target", |b| b.ready_replicas)
    }

    /// ebb reads the Kubernetes API with its own identity in the namespace the request names:
    /// only when that name can be believed and the operator bound the namespace to `key`.
    fn check_kube_read(
        &self,
        namespace: &str,
        key: &str,
        what: &str,
        bound: impl Fn(&Binding) -> bool,
    ) -> Result<(), Refusal> {
        if !(self.mtls || self.policy.trust_caller_namespace) {
            return Err(Refusal::Policy(format!(
                "{key}: ebb cannot tell which namespace is calling, so it reads no {what} (serve with \
                 mTLS for KEDA's client certificate, or set access.trustCallerNamespace when a \
                 NetworkPolicy admits only KEDA)"
            )));
        }
        if !self.policy.bindings_for(namespace).any(bound) {
            return Err(Refusal::Policy(format!(
                "{key}: ebb's access policy does not let namespace {namespace:?} use it \
                 (access.bindings[].{key} in ebb's config)"
            )));
        }
        Ok(())
    }
}

fn grants(g: &IdentityGrant, u: &IdentityUse) -> bool {
    AzureService::from_name(&g.service) == Some(u.service)
        && glob(&g.host.to_ascii_lowercase(), &u.host())
        && glob(&g.entity, &u.entity)
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Access {
        let policy: AccessPolicy = serde_saphyr::from_str(yaml).unwrap();
        policy.validate().unwrap();
        Access { policy, ..Default::default() }
    }

    fn sb(host: &str, entity: &str) -> Held {
        Held::Identity(IdentityUse {
            service: AzureService::ServiceBus,
            url: format!("https://{host}/"),
            entity: entity.into(),
            audience: "https://servicebus.azure.net/.default".into(),
            host_key: "namespace",
            audience_key: None,
        })
    }

    #[test]
    fn globs() {
        for (p, s, want) in [
            ("*", "", true),
            ("orders*", "orders", true),
            ("orders*", "orders-eu", true),
            ("orders*", "payments", false),
            ("*-prod", "orders-prod", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("orders", "orders-eu", false),
        ] {
            assert_eq!(glob(p, s), want, "{p} {s}");
        }
    }

    /// Issue 13: a fresh install binds nothing.
    #[test]
    fn nothing_is_bound_by_default() {
        let a = Access::default();
        let host = "contoso.servicebus.windows.net";
        assert!(matches!(a.check("orders", &[sb(host, "q")]), Err(Refusal::Policy(_))));
        let named = Held::NamedSecret { name: "sb".into(), key: "connectionRef".into() };
        let e = a.check("orders", &[named]).unwrap_err().to_string();
        assert!(e.contains("connectionRef") && e.contains("access.bindings"), "{e}");
        assert!(a.check("orders", &[]).is_ok(), "triggers with their own credentials pass");
        assert!(a.check_auth_ref("orders").is_err());
    }

    #[test]
    fn bindings_grant_by_namespace_host_and_entity() {
        let a = policy(
            r#"
trustCallerNamespace: true
bindings:
  - namespaces: ["orders", "orders-*"]
    identity:
      - {service: servicebus, host: contoso-prod.servicebus.windows.net, entity: "orders*"}
    secrets: ["orders-sb"]
    authenticationRef: true
"#,
        );
        let host = "contoso-prod.servicebus.windows.net";
        assert!(a.check("orders", &[sb(host, "orders-eu")]).is_ok());
        assert!(a.check("orders-eu", &[sb(host, "orders")]).is_ok());
        for (ns, h, entity) in [
            ("payments", host, "orders"),                               // other namespace
            ("orders", host, "payments"),                               // other entity
            ("orders", host, "*"),                                      // a regex over every entity
            ("orders", "contoso-dev.servicebus.windows.net", "orders"), // other host
        ] {
            assert!(matches!(a.check(ns, &[sb(h, entity)]), Err(Refusal::Policy(_))), "{ns} {h} {entity}");
        }
        // A host no operator approved is a metadata error, whatever the bindings say.
        let open = policy("bindings: [{namespaces: ['*'], identity: [{service: servicebus, host: '*'}]}]");
        let e = open.check("x", &[sb("evil.example", "q")]).unwrap_err();
        assert!(matches!(&e, Refusal::Metadata(c) if c.key == "namespace"), "{e:?}");
        assert!(open.check("x", &[sb(host, "anything")]).is_ok());

        let named = |n: &str| Held::NamedSecret { name: n.into(), key: "connectionRef".into() };
        assert!(a.check("orders", &[named("orders-sb")]).is_ok());
        assert!(a.check("orders", &[named("payments-sb")]).is_err());
        assert!(a.check("payments", &[named("orders-sb")]).is_err());
        assert!(a.check_auth_ref("orders").is_ok());
        assert!(a.check_auth_ref("payments").is_err());
    }

    #[test]
    fn auth_ref_needs_a_believable_namespace() {
        let mut a = policy("bindings: [{namespaces: [orders], authenticationRef: true}]");
        assert!(a.check_auth_ref("orders").unwrap_err().to_string().contains("mTLS"));
        a.mtls = true;
        assert!(a.check_auth_ref("orders").is_ok());
    }

    #[test]
    fn ready_replicas_need_a_binding_and_a_believable_namespace() {
        let mut a = policy("bindings: [{namespaces: [orders], readyReplicas: true}, {namespaces: [other]}]");
        assert!(a.check_ready_replicas("orders").unwrap_err().to_string().contains("mTLS"));
        a.mtls = true;
        assert!(a.check_ready_replicas("orders").is_ok());
        let e = a.check_ready_replicas("other").unwrap_err().to_string();
        assert!(e.contains("access.bindings[].readyReplicas") && e.contains("\"other\""), "{e}");
        // One grant does not imply the other.
        assert!(a.check_auth_ref("orders").is_err());
    }

    #[test]
    fn bad_policies_fail_at_start() {
        let p: AccessPolicy =
            serde_saphyr::from_str("bindings: [{namespaces: [a], identity: [{service: vault, host: x}]}]").unwrap();
        assert!(p.validate().unwrap_err().contains("vault"));
        assert!(serde_saphyr::from_str::<AccessPolicy>("bindings: [{namespace: [a]}]").is_err());
    }
}
