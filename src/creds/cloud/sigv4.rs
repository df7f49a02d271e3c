//! AWS Signature Version 4 for the one signed call bkrun makes (ECR's GetAuthorizationToken): canonical request, string to sign, the derived key, the Authorization header; checked against AWS's published test-suite vectors.

use ring::{digest, hmac};

/// The key and scope a request is signed for.
pub struct Signer<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// A request as signed: path already URI-encoded, query as `k=v` pairs, headers in any order
/// and case (host and x-amz-date among them).
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// RFC 3986 unreserved characters stay, everything else is %XX (upper case), as SigV4 wants.
pub fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Signer<'_> {
    /// The derived signing key for a date (YYYYMMDD).
    pub fn key(&self, date: &str) -> Vec<u8> {
        let k = mac(
            format!("AWS4{}", self.secret_access_key).as_bytes(),
            date.as_bytes(),
        );
        let k = mac(&k, self.region.as_bytes());
        let k = mac(&k, self.service.as_bytes());
        mac(&k, b"aws4_request")
    }

    /// The Authorization header's value for `req` at `amz_date` (YYYYMMDD'T'HHMMSS'Z', the
    /// same as its x-amz-date header).
    pub fn authorization(&self, req: &Request<'_>, amz_date: &str) -> String {
        let date = &amz_date[..8.min(amz_date.len())];
        let (canonical, signed) = canonical_request(req);
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let signature = hex(&mac(&self.key(date), to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            self.access_key_id
        )
    }
}

/// The canonical request and its signed-headers list.
fn canonical_request(req: &Request<'_>) -> (String, String) {
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| {
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (k.to_ascii_lowercase(), v)
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let path = if req.path.is_empty() { "/" } else { req.path };
    let canonical = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        sha256_hex(req.body)
    );
    (canonical, signed)
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time.
pub fn amz_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = crate::gocompat::times::civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test suite's key and scope (aws-sig-v4-test-suite: AKIDEXAMPLE, us-east-1, service).
    fn suite() -> Signer<'static> {
        Signer {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            region: "us-east-1",
            service: "service",
        }
    }

    const DATE: &str = "20150830T123600Z";
    const BASE: &[(&str, &str)] = &[("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)];

    fn sig(method: &str, query: &[(&str, &str)], headers: &[(&str, &str)], body: &[u8]) -> String {
        let r = Request {
            method,
            path: "/",
            query,
            headers,
            body,
        };
        suite().authorization(&r, DATE)
    }

    #[test]
    fn the_aws_test_suite_vectors() {
        let head = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=";
        // get-vanilla
        assert_eq!(
            sig("GET", &[], BASE, b""),
            format!("{head}5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        // get-vanilla-query-order-key-case: the query is sorted before signing.
        assert_eq!(
            sig(
                "GET",
                &[("Param2", "value2"), ("Param1", "value1")],
                BASE,
                b""
            ),
            format!("{head}b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        );
        // post-vanilla
        assert_eq!(
            sig("POST", &[], BASE, b""),
            format!("{head}5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
        );
        // post-x-www-form-urlencoded: a body and a third signed header.
        let with_type = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            BASE[0],
            BASE[1],
        ];
        assert_eq!(
            sig("POST", &[], &with_type, b"Param1=value1"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(amz_date(1_440_938_160), DATE);
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(uri_encode("a b/c~"), "a%20b%2Fc~");
    }
}
