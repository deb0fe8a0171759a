//! The Event Hubs poller: partitions from the runtime API, checkpoints from blob storage, both
//! fanned out under the context's upstream concurrency.

use std::borrow::Cow;
use std::sync::Arc;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use url::Url;

use super::{
    API_VERSION, DEFAULT_TIMEOUT, ENTRA_SCOPE, HubAuth, MAX_PARTITIONS, PartitionInfo, PollConfig, SCALER_TYPE,
    STORAGE_VERSION, StorageAuth, Strategy, parse_storage, sequence_sums, total, unprocessed,
};
use crate::azure::namespace::{
    NamespaceConnection, error_detail, malformed_atom, path_encode, sas_authorization, scheme_for, unix_now,
};
use crate::azure::storage::{SAS_LIFETIME, STORAGE_SCOPE, blob_container_sas, storage_error_detail};
use crate::azure::token::TokenCache;
use crate::azure::xml::walk_xml;
use crate::http::{content_type, read_text, retry_after, sensitive, status_error, transport_error};
use crate::secret::scrub;
use crate::{ConfigError, ConfigErrors, Measurement, PollError, Poller, ScalerContext, excerpt};

/// Largest answer read.
const MAX_BODY: usize = 8 << 20;

/// The token of `cache`, which the poller built for the identity mode it is in.
async fn token(cache: &Option<TokenCache>, ctx: &ScalerContext) -> Result<String, PollError> {
    match cache {
        Some(c) => c.token(ctx).await,
        None => Err(PollError::Credential("no identity configured for this source".into())),
    }
}

pub(super) struct EventHubPoller {
    ctx: Arc<ScalerContext>,
    client: Arc<reqwest::Client>,
    cfg: Arc<PollConfig>,
    /// Entra tokens for the namespace and the checkpoint account, when ebb's identity is used.
    hub_token: Option<TokenCache>,
    storage_token: Option<TokenCache>,
}

impl EventHubPoller {
    pub(super) fn new(ctx: &Arc<ScalerContext>, cfg: Arc<PollConfig>) -> Result<Self, ConfigErrors> {
        let hub_token = match &cfg.hub_auth {
            HubAuth::Identity { host, host_key } => {
                let target = Url::parse(&format!("https://{host}/"))
                    .map_err(|_| ConfigError::new(*host_key, "the namespace host is not a URL"))?;
                Some(TokenCache::new(target, ENTRA_SCOPE))
            }
            HubAuth::Connection { .. } => None,
        };
        let storage_token = match &cfg.storage {
            StorageAuth::Identity(endpoint) => Some(TokenCache::new(endpoint.clone(), STORAGE_SCOPE)),
            StorageAuth::Connection(_) => None,
        };
        Ok(Self { ctx: ctx.clone(), client: ctx.clients.default_client("connection")?, cfg, hub_token, storage_token })
    }
}

/// How one poll reaches Event Hubs.
struct HubTarget {
    base: String,
    ns: String,
    hub: String,
    authorization: HeaderValue,
    secrets: Vec<String>,
}

/// How one poll reaches the checkpoint container.
struct BlobTarget {
    /// `<endpoint>/<container>`.
    container_url: Url,
    /// SAS query (account key) or none.
    sas: Option<String>,
    authorization: Option<HeaderValue>,
    secrets: Vec<String>,
}

#[async_trait::async_trait]
impl Poller for EventHubPoller {
    async fn poll(&self) -> Result<Measurement, PollError> {
        self.measure().await
    }
}

impl EventHubPoller {
    async fn measure(&self) -> Result<Measurement, PollError> {
        let (hub, blob) = tokio::try_join!(self.hub_target(), self.blob_target())?;
        let ids = self.partition_ids(&hub).await?;
        let cg = &self.cfg.consumer_group;
        let names: Vec<String> = ids.iter().map(|id| self.cfg.strategy.blob_name(&hub.ns, &hub.hub, cg, id)).collect();
        // One request per partition and one per checkpoint, both services at once, each
        // bounded by --max-upstream-concurrency.
        let (hub_ref, blob_ref, partitions) = (&hub, &blob, ids.len() as u32);
        let (infos, ckpts) = tokio::try_join!(
            // Owned items: a closure over borrowed ones is not `Send` enough for async_trait.
            // Partitions are named by their index in the answer in errors: the ids are values of
            // the answer.
            self.ctx.bounded_requests(ids.into_iter().enumerate(), |(i, id)| async move {
                self.partition(hub_ref, i, &id).await
            }),
            self.ctx.bounded_requests(names.into_iter().enumerate(), |(i, n)| async move {
                self.checkpoint(blob_ref, i, &n).await
            }),
        )?;
        let counts = infos.iter().zip(&ckpts).map(|(p, c)| unprocessed(*p, *c, self.cfg.stale_threshold));
        Ok(Measurement::Partitions {
            unprocessed: total(counts) as f64,
            partitions,
            sequence: sequence_sums(&infos, &ckpts),
        })
    }

    async fn hub_target(&self) -> Result<HubTarget, PollError> {
        match &self.cfg.hub_auth {
            HubAuth::Connection { source, parsed } => {
                let cs = match parsed {
                    Some(cs) => Cow::Borrowed(cs),
                    None => {
                        let value = source.resolve(&self.ctx)?;
                        Cow::Owned(
                            NamespaceConnection::parse(&value)
                                .map_err(|r| PollError::Credential(format!("named secret {}: {r}", source.label())))?,
                        )
                    }
                };
                let hub =
                    cs.entity_path.clone().filter(|p| !p.is_empty()).or_else(|| self.cfg.hub.clone()).ok_or_else(
                        || PollError::Credential("no EntityPath in the connection and no eventHubName".into()),
                    )?;
                let base = format!("{}://{}", scheme_for(&cs.host), cs.host);
                let (authorization, secrets) =
                    sas_authorization(&cs.credential, &format!("{base}/{}", path_encode(&hub)))?;
                Ok(HubTarget { base, ns: cs.host.clone(), hub, authorization, secrets })
            }
            HubAuth::Identity { host, .. } => {
                let token = token(&self.hub_token, &self.ctx).await?;
                Ok(HubTarget {
                    base: format!("{}://{host}", scheme_for(host)),
                    ns: host.clone(),
                    hub: self.cfg.hub.clone().unwrap_or_default(),
                    authorization: sensitive(&format!("Bearer {token}"))?,
                    secrets: vec![token],
                })
            }
        }
    }

    async fn blob_target(&self) -> Result<BlobTarget, PollError> {
        let container = &self.cfg.container;
        let with_container = |mut u: Url| {
            u.path_segments_mut()
                .map_err(|_| PollError::Credential("bad blob endpoint".into()))?
                .pop_if_empty()
                .push(container);
            Ok::<Url, PollError>(u)
        };
        match &self.cfg.storage {
            StorageAuth::Connection(source) => {
                let value = source.resolve(&self.ctx)?;
                let (endpoint, account, key) = parse_storage(&value)
                    .map_err(|r| PollError::Credential(format!("storage connection {}: {r}", source.label())))?;
                let sas = blob_container_sas(&account, &key, container, "r", unix_now() + SAS_LIFETIME.as_secs());
                let sig = url::form_urlencoded::parse(sas.as_bytes())
                    .find(|(k, _)| k == "sig")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                Ok(BlobTarget {
                    container_url: with_container(endpoint)?,
                    sas: Some(sas),
                    authorization: None,
                    secrets: vec![sig],
                })
            }
            StorageAuth::Identity(endpoint) => {
                let token = token(&self.storage_token, &self.ctx).await?;
                Ok(BlobTarget {
                    container_url: with_container(endpoint.clone())?,
                    sas: None,
                    authorization: Some(sensitive(&format!("Bearer {token}"))?),
                    secrets: vec![token],
                })
            }
        }
    }

    async fn partition_ids(&self, t: &HubTarget) -> Result<Vec<String>, PollError> {
        let url = format!("{}/{}?api-version={API_VERSION}", t.base, path_encode(&t.hub));
        let what = format!("event hub {:?}", t.hub);
        let (body, content_type) = self.hub_get(t, &url, &what).await?;
        let ids = parse_partition_ids(&body)
            .map_err(|e| malformed_atom(SCALER_TYPE, &what, &e, content_type.as_deref(), &body, &t.secrets))?;
        if ids.is_empty() {
            return Err(PollError::NotFound(format!("{what} does not exist (no partitions in the answer)")));
        }
        if ids.len() > MAX_PARTITIONS {
            return Err(PollError::Malformed(format!("{what}: {} partitions", ids.len())));
        }
        Ok(ids)
    }

    /// Partition `id`, the `index`th of the hub's answer.
    async fn partition(&self, t: &HubTarget, index: usize, id: &str) -> Result<PartitionInfo, PollError> {
        let url = format!(
            "{}/{}/consumergroups/{}/partitions/{}?api-version={API_VERSION}",
            t.base,
            path_encode(&t.hub),
            path_encode(&self.cfg.consumer_group),
            path_encode(id)
        );
        let what = format!("partition at index {index} of event hub {:?}", t.hub);
        let (body, content_type) = self.hub_get(t, &url, &what).await?;
        parse_partition(&body)
            .map_err(|e| malformed_atom(SCALER_TYPE, &what, &e, content_type.as_deref(), &body, &t.secrets))
    }

    /// A GET of the management API; the body and its `Content-Type` on success.
    async fn hub_get(&self, t: &HubTarget, url: &str, what: &str) -> Result<(String, Option<String>), PollError> {
        let response = self
            .client
            .get(url)
            .timeout(DEFAULT_TIMEOUT)
            .header(AUTHORIZATION, t.authorization.clone())
            .send()
            .await
            .map_err(|e| transport_error(e, DEFAULT_TIMEOUT))?;
        let status = response.status();
        let retry = retry_after(response.headers());
        let content_type = content_type(response.headers());
        let body = read_text(response, MAX_BODY).await.map_err(|e| transport_error(e, DEFAULT_TIMEOUT))?;
        if status.is_success() {
            return Ok((body, content_type));
        }
        tracing::debug!(
            scaler = SCALER_TYPE,
            status = status.as_u16(),
            detail = %excerpt(&scrub(&body, &t.secrets)),
            "event hubs management api returned an error"
        );
        Err(status_error(status.as_u16(), error_detail(content_type.as_deref(), &body), retry, what))
    }

    /// The checkpoint's sequence number, `None` when the blob or container does not exist.
    /// `index` is its partition's place in the hub's answer.
    async fn checkpoint(&self, t: &BlobTarget, index: usize, blob: &str) -> Result<Option<i64>, PollError> {
        let mut url = t.container_url.clone();
        {
            let mut segs = url.path_segments_mut().map_err(|_| PollError::Malformed("blob URL".into()))?;
            for s in blob.split('/') {
                segs.push(s);
            }
        }
        url.set_query(t.sas.as_deref());
        let metadata = self.cfg.strategy == Strategy::BlobMetadata;
        let mut req = if metadata { self.client.head(url) } else { self.client.get(url) };
        req = req.timeout(DEFAULT_TIMEOUT).header("x-ms-version", STORAGE_VERSION);
        if let Some(a) = &t.authorization {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let response = req.send().await.map_err(|e| transport_error(e, DEFAULT_TIMEOUT))?;
        let status = response.status();
        if status.as_u16() == 404 {
            return Ok(None);
        }
        let what = format!("checkpoint of the partition at index {index}");
        if status.is_success() && metadata {
            let v = response
                .headers()
                .get("x-ms-meta-sequencenumber")
                .ok_or_else(|| PollError::Malformed(format!("{what}: no sequencenumber metadata")))?;
            let text = v.to_str().unwrap_or_default().trim();
            return text
                .parse::<i64>()
                .map(Some)
                .map_err(|_| PollError::Malformed(format!("{what}: sequencenumber metadata is not an integer")));
        }
        let retry = retry_after(response.headers());
        let code = response.headers().get("x-ms-error-code").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = content_type(response.headers());
        let body = read_text(response, MAX_BODY).await.map_err(|e| transport_error(e, DEFAULT_TIMEOUT))?;
        let log = |status: u16| {
            tracing::debug!(
                scaler = SCALER_TYPE,
                status,
                blob,
                detail = %excerpt(&scrub(&body, &t.secrets)),
                "checkpoint blob answer is unusable"
            )
        };
        if status.is_success() {
            return self.cfg.strategy.parse_payload(&body).map(Some).map_err(|e| {
                log(status.as_u16());
                let summary = crate::body_summary(content_type.as_deref(), body.len());
                PollError::Malformed(format!("{what}: {e} ({summary})"))
            });
        }
        log(status.as_u16());
        let detail = storage_error_detail(code.as_deref(), content_type.as_deref(), &body);
        Err(status_error(status.as_u16(), detail, retry, &what))
    }
}

/// `EventHubDescription/PartitionIds/string` texts.
pub fn parse_partition_ids(body: &str) -> Result<Vec<String>, String> {
    let mut ids: Vec<String> = Vec::new();
    walk_xml(body, |path, text| {
        let n = path.len();
        if n >= 2 && path[n - 1] == b"string" && path[n - 2] == b"PartitionIds" && !text.trim().is_empty() {
            ids.push(text.trim().to_string());
        }
    })?;
    Ok(ids)
}

/// `PartitionDescription/BeginSequenceNumber` and `EndSequenceNumber`.
pub fn parse_partition(body: &str) -> Result<PartitionInfo, String> {
    let (mut begin, mut end) = (None::<String>, None::<String>);
    walk_xml(body, |path, text| {
        let n = path.len();
        if n >= 2 && path[n - 2] == b"PartitionDescription" {
            match path[n - 1].as_slice() {
                b"BeginSequenceNumber" => begin.get_or_insert_with(String::new).push_str(text),
                b"EndSequenceNumber" => end.get_or_insert_with(String::new).push_str(text),
                _ => {}
            }
        }
    })?;
    let num = |v: Option<String>, name: &str| {
        let v = v.ok_or_else(|| format!("no {name} in the PartitionDescription"))?;
        v.trim().parse::<i64>().map_err(|_| format!("{name} is not an integer"))
    };
    Ok(PartitionInfo { begin: num(begin, "BeginSequenceNumber")?, last: num(end, "EndSequenceNumber")? })
}
