//! The HTML page of every response rwsgi makes itself: the front tier's refusals and
//! errors, a missing static file, plain HTTP on a TLS port, a worker's 500. One
//! page, so that they all look alike and change in one place.

/// The page for `code` (`reason` is its canonical phrase), with `detail`, when given,
/// as a sentence below the heading.
pub fn html(code: u16, reason: &str, detail: Option<&str>) -> String {
    let detail = detail.map(|d| format!("<p>{d}</p>")).unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html><head><title>{code} {reason}</title></head>\n\
         <body><h1>{code} {reason}</h1>{detail}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_status_and_says_its_detail() {
        assert_eq!(
            html(404, "Not Found", None),
            "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n\
             <body><h1>404 Not Found</h1></body></html>\n"
        );
        assert!(html(400, "Bad Request", Some("Why.")).contains("</h1><p>Why.</p></body>"));
    }
}
