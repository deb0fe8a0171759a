//! Azure Storage plumbing shared by `azure-queue` (the queue) and `azure-eventhub` (checkpoint
//! blobs): storage connection strings, service SAS signed from an account key, blob and queue
//! endpoints, and Storage error answers named without quoting them.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

/// Lifetime of a SAS ebb signs from an account key.
pub const SAS_LIFETIME: Duration = Duration::from_secs(3600);

/// A signed SAS is replaced this long before it ends.
pub const SAS_RENEW_BEFORE: Duration = Duration::from_secs(600);

/// The SAS service version ebb signs with (supported by Azure and by Azurite 3.x).
pub const SAS_VERSION: &str = "2021-12-02";

/// Token scope for ebb's own identity.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// Azurite's well-known account (`UseDevelopmentStorage=true`).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known key (public, documented by Microsoft).
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_QUEUE_ENDPOINT: &str = "http://127.0.0.1:10001/devstoreaccount1";

fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    super::connection_pairs(s).map_err(|n| format!("connection string: part {n} is not of the form Key=Value"))
}

/// A storage account key, decoded. `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKey(Vec<u8>);

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(***)")
    }
}

impl AccountKey {
    /// Decodes a base64 account key; the error never carries the value.
    pub fn from_base64(key: &str) -> Result<AccountKey, String> {
        B64.decode(key.trim()).map(AccountKey).map_err(|_| "AccountKey is not valid base64".to_string())
    }

    /// `base64(HMAC-SHA256(key, string_to_sign))`: the signature of Shared Key and SAS.
    pub fn sign(&self, string_to_sign: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(string_to_sign.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }
}

/// How a connection string authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionCredential {
    Key {
        account: String,
        key: AccountKey,
    },
    /// A SAS query string without the leading `?`.
    Sas(SasToken),
}

/// A SAS query string. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken(pub String);

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SasToken(***)")
    }
}

/// A parsed storage connection string.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionString {
    /// The queue service endpoint, without a trailing `/` (`https://acct.queue.core.windows.net`,
    /// `http://127.0.0.1:10001/devstoreaccount1`).
    pub queue_endpoint: Url,
    pub credential: ConnectionCredential,
}

impl ConnectionString {
    /// Parses a connection string. Errors say what is missing or wrong, never a value.
    pub fn parse(s: &str) -> Result<ConnectionString, String> {
        let mut protocol = None;
        let mut account = None;
        let mut key = None;
        let mut suffix = None;
        let mut endpoint = None;
        let mut sas = None;
        let mut dev = false;
        for (k, v) in pairs(s)? {
            match k.as_str() {
                "defaultendpointsprotocol" => protocol = Some(v),
                "accountname" => account = Some(v),
                "accountkey" => key = Some(v),
                "endpointsuffix" => suffix = Some(v),
                "queueendpoint" => endpoint = Some(v),
                "sharedaccesssignature" => sas = Some(v),
                "usedevelopmentstorage" => dev = v.eq_ignore_ascii_case("true"),
                // BlobEndpoint, TableEndpoint, FileEndpoint, DevelopmentStorageProxyUri, …
                _ => {}
            }
        }
        if dev {
            account.get_or_insert_with(|| DEV_ACCOUNT.to_string());
            if key.is_none() && sas.is_none() {
                key = Some(DEV_KEY.to_string());
            }
            endpoint.get_or_insert_with(|| DEV_QUEUE_ENDPOINT.to_string());
        }
        let account = account.filter(|a| !a.is_empty());
        let queue_endpoint = match endpoint.filter(|e| !e.is_empty()) {
            Some(e) => {
                let url = Url::parse(&e).map_err(|_| "connection string: QueueEndpoint is not a URL".to_string())?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || url.query().is_some() {
                    return Err("connection string: QueueEndpoint must be an http(s) URL without a query".into());
                }
                url
            }
            None => {
                let Some(account) = &account else {
                    return Err("connection string: needs AccountName or QueueEndpoint".into());
                };
                let protocol = protocol.as_deref().unwrap_or("https").to_ascii_lowercase();
                if protocol != "https" && protocol != "http" {
                    return Err("connection string: DefaultEndpointsProtocol must be http or https".into());
                }
                let suffix = suffix.as_deref().unwrap_or("core.windows.net").trim_start_matches('.');
                Url::parse(&format!("{protocol}://{account}.queue.{suffix}"))
                    .map_err(|_| "connection string: AccountName and EndpointSuffix do not form a host".to_string())?
            }
        };
        let mut queue_endpoint = queue_endpoint;
        let trimmed = queue_endpoint.path().trim_end_matches('/').to_string();
        queue_endpoint.set_path(&trimmed);
        let credential = match (key.filter(|k| !k.is_empty()), sas.filter(|s| !s.is_empty())) {
            (Some(k), _) => {
                let Some(account) = account else {
                    return Err("connection string: AccountKey needs AccountName".into());
                };
                let key = AccountKey::from_base64(&k).map_err(|e| format!("connection string: {e}"))?;
                ConnectionCredential::Key { account, key }
            }
            (None, Some(sas)) => ConnectionCredential::Sas(SasToken(sas.trim_start_matches('?').to_string())),
            (None, None) => return Err("connection string: has neither AccountKey nor SharedAccessSignature".into()),
        };
        Ok(ConnectionString { queue_endpoint, credential })
    }

    /// `<endpoint>/<queue>`.
    pub fn queue_url(&self, queue: &str) -> Url {
        let mut url = self.queue_endpoint.clone();
        url.path_segments_mut().expect("http(s) URL has a path").pop_if_empty().push(queue);
        url
    }
}

/// A queue service SAS for `queue` with permissions `permissions`, ending at `expiry` (seconds
/// since the epoch), as a query string without `?`. String to sign (queue service, version
/// 2015-04-05 and later): `sp \n st \n se \n /queue/<account>/<queue> \n si \n sip \n spr \n sv`.
pub fn queue_service_sas(account: &str, key: &AccountKey, queue: &str, permissions: &str, expiry: u64) -> String {
    let se = iso8601(expiry);
    let string_to_sign = format!("{permissions}\n\n{se}\n/queue/{account}/{queue}\n\n\n\n{SAS_VERSION}");
    let sig = key.sign(&string_to_sign);
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("se", &se)
        .append_pair("sp", permissions)
        .append_pair("sig", &sig)
        .finish()
}

/// A blob **container** service SAS (`sr=c`) with `permissions`, ending at `expiry` (seconds
/// since the epoch), as a query string without `?`. String to sign (version 2020-12-06 and
/// later): `sp \n st \n se \n /blob/<account>/<container> \n si \n sip \n spr \n sv \n sr \n
/// snapshot \n ses \n rscc \n rscd \n rsce \n rscl \n rsct`.
pub fn blob_container_sas(account: &str, key: &AccountKey, container: &str, permissions: &str, expiry: u64) -> String {
    let se = iso8601(expiry);
    let resource = format!("/blob/{account}/{container}");
    let fields = [permissions, "", &se, &resource, "", "", "", SAS_VERSION, "c", "", "", "", "", "", "", ""];
    let sig = key.sign(&fields.join("\n"));
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("se", &se)
        .append_pair("sr", "c")
        .append_pair("sp", permissions)
        .append_pair("sig", &sig)
        .finish()
}

/// The blob service endpoint of a storage connection string, without a trailing `/`:
/// `BlobEndpoint`, Azurite's `http://127.0.0.1:10000/devstoreaccount1` for
/// `UseDevelopmentStorage=true`, else `<protocol>://<account>.blob.<suffix>`. Errors never carry
/// a value.
pub fn blob_endpoint(s: &str) -> Result<Url, String> {
    let (mut protocol, mut account, mut suffix, mut endpoint, mut dev) = (None, None, None, None, false);
    for (k, v) in pairs(s)? {
        match k.as_str() {
            "defaultendpointsprotocol" => protocol = Some(v),
            "accountname" => account = Some(v),
            "endpointsuffix" => suffix = Some(v),
            "blobendpoint" => endpoint = Some(v),
            "usedevelopmentstorage" => dev = v.eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    let mut url = match endpoint.filter(|e| !e.is_empty()) {
        Some(e) => {
            let url = Url::parse(&e).map_err(|_| "connection string: BlobEndpoint is not a URL".to_string())?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || url.query().is_some() {
                return Err("connection string: BlobEndpoint must be an http(s) URL without a query".into());
            }
            url
        }
        None if dev => Url::parse("http://127.0.0.1:10000/devstoreaccount1").expect("static URL"),
        None => {
            let account =
                account.filter(|a| !a.is_empty()).ok_or("connection string: needs AccountName or BlobEndpoint")?;
            let protocol = protocol.as_deref().unwrap_or("https").to_ascii_lowercase();
            if protocol != "https" && protocol != "http" {
                return Err("connection string: DefaultEndpointsProtocol must be http or https".into());
            }
            let suffix = suffix.as_deref().unwrap_or("core.windows.net").trim_start_matches('.').to_string();
            Url::parse(&format!("{protocol}://{account}.blob.{suffix}"))
                .map_err(|_| "connection string: AccountName and EndpointSuffix do not form a host".to_string())?
        }
    };
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Ok(url)
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since the epoch (UTC).
pub fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An Azure Storage error answer for the caller: its error code (the `x-ms-error-code` header,
/// else the `<Code>` of its XML error body) when it is a short alphanumeric token, and the
/// media type and size ([`crate::body_summary`]). Never the `<Message>` nor other bytes: a
/// connection string (hence the host) is the caller's, and the answer may be any internal page.
pub fn storage_error_detail(code_header: Option<&str>, content_type: Option<&str>, body: &str) -> String {
    let summary = crate::body_summary(content_type, body.len());
    let code = code_header
        .map(|c| c.trim().to_owned())
        .filter(|c| is_storage_code(c))
        .or_else(|| super::xml::element_text(body, "Code").map(|c| c.trim().to_owned()))
        .filter(|c| is_storage_code(c));
    match code {
        Some(code) => format!("error code {code} ({summary})"),
        None => summary,
    }
}

/// Storage error codes are PascalCase names (`AuthenticationFailed`, `QueueNotFound`).
pub fn is_storage_code(c: &str) -> bool {
    !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CS: &str = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net";

    #[test]
    fn connection_strings() {
        let c = ConnectionString::parse(CS).unwrap();
        assert_eq!(c.queue_endpoint.as_str(), "https://acct.queue.core.windows.net/");
        assert_eq!(c.queue_url("orders").as_str(), "https://acct.queue.core.windows.net/orders");
        assert!(
            matches!(&c.credential, ConnectionCredential::Key { account, key } if account == "acct" && key.0 == b"key")
        );

        let c = ConnectionString::parse(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;",
        )
        .unwrap();
        assert_eq!(c.queue_url("q").as_str(), "http://127.0.0.1:10001/devstoreaccount1/q");

        let c = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(c.queue_url("q").as_str(), "http://127.0.0.1:10001/devstoreaccount1/q");
        assert!(matches!(&c.credential, ConnectionCredential::Key { account, .. } if account == DEV_ACCOUNT));

        let c = ConnectionString::parse(
            "accountname=acct;endpointsuffix=core.chinacloudapi.cn;SharedAccessSignature=?sv=1&sig=abc",
        )
        .unwrap();
        assert_eq!(c.queue_url("q").as_str(), "https://acct.queue.core.chinacloudapi.cn/q");
        assert_eq!(c.credential, ConnectionCredential::Sas(SasToken("sv=1&sig=abc".into())));

        let c = ConnectionString::parse("QueueEndpoint=https://x.example/;SharedAccessSignature=sv=1&sig=a=b").unwrap();
        assert_eq!(c.queue_url("q").as_str(), "https://x.example/q");
        assert_eq!(c.credential, ConnectionCredential::Sas(SasToken("sv=1&sig=a=b".into())));

        for bad in [
            "",
            "AccountName=a",
            "AccountKey=a2V5",
            "SharedAccessSignature=sv=1",
            "AccountName=a;AccountKey=***",
            "DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey=a2V5",
            "QueueEndpoint=not a url;AccountKey=a2V5;AccountName=a",
            "garbage",
        ] {
            assert!(ConnectionString::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn iso8601_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    /// Vector derived with openssl from the string to sign documented for queue service SAS:
    /// `printf 'r\n\n2030-01-01T00:00:00Z\n/queue/devstoreaccount1/orders\n\n\n\n2021-12-02' |
    ///  openssl dgst -sha256 -mac HMAC -macopt hexkey:$(echo -n $DEV_KEY | base64 -d | xxd -p -c 256) -binary | base64`
    #[test]
    fn service_sas_vector_and_shape() {
        let key = AccountKey::from_base64(DEV_KEY).unwrap();
        let sas = queue_service_sas(DEV_ACCOUNT, &key, "orders", "r", 1_893_456_000);
        let pairs: HashMap<String, String> = url::form_urlencoded::parse(sas.as_bytes()).into_owned().collect();
        assert_eq!(pairs["sv"], SAS_VERSION);
        assert_eq!(pairs["se"], "2030-01-01T00:00:00Z");
        assert_eq!(pairs["sp"], "r");
        assert_eq!(pairs["sig"], SAS_VECTOR);
        assert_eq!(pairs.len(), 4);
    }
    const SAS_VECTOR: &str = "zMgx4l2QA364gFOivqzEP4f9O4NEQnOC6+5Nk8c2wYk=";
}
