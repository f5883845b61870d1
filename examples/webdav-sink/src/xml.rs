//! PROPFIND: the request body and the `207 Multi-Status` answer.

use crate::date::parse_rfc1123_ms;

/// The properties a listing asks for.
pub const PROPFIND_BODY: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
<D:propfind xmlns:D=\"DAV:\"><D:prop>\
<D:resourcetype/><D:getcontentlength/><D:getlastmodified/>\
</D:prop></D:propfind>\n";

/// One `<D:response>` of a multistatus answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As the server wrote it (percent-encoded path or absolute URL).
    pub href: String,
    pub collection: bool,
    pub size: Option<u64>,
    pub modified_ms: Option<u64>,
}

/// The entries of a `207 Multi-Status` body. Responses whose status is not 2xx are left
/// out, and only properties reported with a 2xx `propstat` count. An error says why the
/// body is not a multistatus document.
pub fn parse_multistatus(xml: &str) -> Result<Vec<Entry>, String> {
    // roxmltree refuses DTDs (and so entity expansion) by default.
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not valid XML: {e}"))?;
    let root = doc.root_element();
    if !is_dav(root, "multistatus") {
        return Err(format!(
            "expected a DAV: multistatus document, got <{}>",
            root.tag_name().name()
        ));
    }
    let mut entries = Vec::new();
    for response in root.children().filter(|n| is_dav(*n, "response")) {
        let Some(href) = child(response, "href").and_then(|h| h.text()) else {
            continue;
        };
        if child(response, "status").is_some_and(|s| !ok_status(s.text().unwrap_or(""))) {
            continue;
        }
        let mut entry = Entry {
            href: href.trim().to_owned(),
            collection: false,
            size: None,
            modified_ms: None,
        };
        for propstat in response.children().filter(|n| is_dav(*n, "propstat")) {
            let status = child(propstat, "status")
                .and_then(|s| s.text())
                .unwrap_or("");
            if !ok_status(status) {
                continue;
            }
            let Some(prop) = child(propstat, "prop") else {
                continue;
            };
            for p in prop.children().filter(roxmltree::Node::is_element) {
                let text = p.text().unwrap_or("").trim();
                if is_dav(p, "resourcetype") {
                    entry.collection |= child(p, "collection").is_some();
                } else if is_dav(p, "getcontentlength") {
                    entry.size = text.parse().ok();
                } else if is_dav(p, "getlastmodified") {
                    entry.modified_ms = parse_rfc1123_ms(text);
                }
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// An element `name` in the `DAV:` namespace (or, from sloppy servers, in none).
fn is_dav(node: roxmltree::Node<'_, '_>, name: &str) -> bool {
    node.is_element()
        && node.tag_name().name() == name
        && matches!(node.tag_name().namespace(), Some("DAV:") | None)
}

fn child<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    node.children().find(|n| is_dav(*n, name))
}

/// `HTTP/1.1 200 OK` and other 2xx status lines.
fn ok_status(line: &str) -> bool {
    line.split_whitespace()
        .nth(1)
        .is_some_and(|code| code.len() == 3 && code.starts_with('2'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `rclone serve webdav` (golang.org/x/net/webdav) answers, trimmed.
    const RCLONE: &str = r#"<?xml version="1.0" encoding="UTF-8"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/backups/</D:href><D:propstat><D:prop><D:resourcetype><D:collection xmlns:D="DAV:"/></D:resourcetype><D:getlastmodified>Wed, 10 Dec 2025 12:00:00 GMT</D:getlastmodified></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat><D:propstat><D:prop><D:getcontentlength></D:getcontentlength></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat></D:response><D:response><D:href>/backups/backup-2025-12-10T12-00-00-000Z.sql.zst</D:href><D:propstat><D:prop><D:resourcetype></D:resourcetype><D:getcontentlength>1234</D:getcontentlength><D:getlastmodified>Wed, 10 Dec 2025 12:00:01 GMT</D:getlastmodified></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>"#;

    #[test]
    fn parses_an_rclone_listing() {
        let entries = parse_multistatus(RCLONE).expect("valid");
        assert_eq!(
            entries,
            vec![
                Entry {
                    href: "/backups/".into(),
                    collection: true,
                    size: None,
                    modified_ms: Some(1_765_368_000_000),
                },
                Entry {
                    href: "/backups/backup-2025-12-10T12-00-00-000Z.sql.zst".into(),
                    collection: false,
                    size: Some(1234),
                    modified_ms: Some(1_765_368_001_000),
                },
            ]
        );
    }

    /// Another prefix, absolute hrefs, a response-level 404, whitespace, an unknown prop.
    #[test]
    fn parses_other_servers_styles() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<multistatus xmlns="DAV:" xmlns:x="urn:x">
  <response>
    <href>
      https://dav.example.com/a%20b/x.sql.zst
    </href>
    <propstat>
      <prop>
        <resourcetype/>
        <getcontentlength> 42 </getcontentlength>
        <x:color>red</x:color>
        <getlastmodified>not a date</getlastmodified>
      </prop>
      <status>HTTP/1.1 200 OK</status>
    </propstat>
  </response>
  <response>
    <href>/a%20b/gone</href>
    <status>HTTP/1.1 404 Not Found</status>
  </response>
  <x:response><x:href>/not/dav</x:href></x:response>
</multistatus>"#;
        let entries = parse_multistatus(xml).expect("valid");
        assert_eq!(
            entries,
            vec![Entry {
                href: "https://dav.example.com/a%20b/x.sql.zst".into(),
                collection: false,
                size: Some(42),
                modified_ms: None,
            }]
        );
    }

    #[test]
    fn rejects_what_is_not_a_multistatus() {
        assert!(
            parse_multistatus("<html><body>Login</body></html>")
                .expect_err("html")
                .contains("expected a DAV: multistatus")
        );
        assert!(
            parse_multistatus("<D:multistatus xmlns:D=\"DAV:\">")
                .expect_err("truncated")
                .starts_with("not valid XML")
        );
        // No entity expansion (billion laughs).
        let dtd = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><d>&a;</d>"#;
        assert!(parse_multistatus(dtd).is_err());
        assert_eq!(
            parse_multistatus(r#"<D:multistatus xmlns:D="DAV:"/>"#).expect("empty"),
            vec![]
        );
    }

    #[test]
    fn the_request_body_is_well_formed() {
        let doc = roxmltree::Document::parse(PROPFIND_BODY).expect("valid XML");
        assert!(is_dav(doc.root_element(), "propfind"));
    }
}
