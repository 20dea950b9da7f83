//! The live page `upstreamtop_status` answers a browser with
//! (`?format=html`, `upstreamtop_status html;`, or `Accept: text/html`
//! without a format): one self-contained HTML file (`page/upstreamtop.html`,
//! no external resources), whose script polls the JSON of the same
//! location with `If-None-Match`.
//!
//! Paths, methods and names in the JSON come off the wire: the script puts
//! them into the page as text only (`textContent`), and the answer's
//! [`content_security_policy`] allows no script or style but the page's
//! own, identified by their hashes, so even a mistake there could not run
//! injected code.

use std::sync::OnceLock;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The page.
pub const PAGE: &str = include_str!("page/upstreamtop.html");

/// The `Content-Security-Policy` of the page: nothing from elsewhere, no
/// framing, and only the page's own inline script and style (by hash).
/// `img-src data:` lets the page name an empty icon, so a browser does not
/// ask the site for `/favicon.ico` (which nginx would proxy to a backend).
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |open: &str, close: &str| {
            let start = PAGE.find(open).map_or(0, |i| i + open.len());
            let end = PAGE[start..].find(close).map_or(start, |i| start + i);
            let digest = Sha256::digest(&PAGE.as_bytes()[start..end]);
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
        };
        format!(
            "default-src 'self'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small_and_self_contained() {
        assert!(PAGE.len() < 100 * 1024, "{} bytes", PAGE.len());
        assert_eq!(PAGE.matches("<script>").count(), 1, "one inline script, hashed in the policy");
        assert_eq!(PAGE.matches("<style>").count(), 1, "one inline style, hashed in the policy");
        for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "url("] {
            assert!(!PAGE.contains(external), "the page loads nothing from elsewhere: {external}");
        }
        // Data from the answer goes in as text.
        assert!(
            !PAGE.contains("innerHTML") && !PAGE.contains("insertAdjacentHTML") && !PAGE.contains("document.write")
        );
        assert!(!PAGE.contains(" style=\""), "inline style attributes would need 'unsafe-inline'");
    }

    #[test]
    fn the_policy_names_the_hashes() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'self'; script-src 'sha256-"), "{csp}");
        assert!(csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
    }
}
