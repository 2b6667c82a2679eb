use std::time::Duration;

use crate::Error;

/// GET `url` and return the status code and body. Only used against loopback components.
pub(crate) async fn get(url: &str, timeout: Duration) -> Result<(u16, String), Error> {
    let fail = |reason: String| Error::Http {
        url: url.to_string(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| fail(format!("building an HTTP client: {e}")))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| fail(e.to_string()))?;
    Ok((status, body))
}

/// GET `url` and parse a JSON body, failing on any status other than 200.
pub(crate) async fn get_json(url: &str, timeout: Duration) -> Result<serde_json::Value, Error> {
    let (status, body) = get(url, timeout).await?;
    let fail = |reason: String| Error::Http {
        url: url.to_string(),
        reason,
    };
    if status != 200 {
        return Err(fail(format!("status {status}, body: {}", shorten(&body))));
    }
    serde_json::from_str(&body)
        .map_err(|e| fail(format!("body is not JSON ({e}): {}", shorten(&body))))
}

/// Percent-encodes a query parameter value.
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn shorten(body: &str) -> String {
    const MAX: usize = 500;
    if body.len() <= MAX {
        return body.to_string();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &body[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("up"), "up");
        assert_eq!(
            encode_query_value("up{job=\"a b\"}"),
            "up%7Bjob%3D%22a%20b%22%7D"
        );
    }
}
