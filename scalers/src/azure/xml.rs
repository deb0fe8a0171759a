//! XML reading for Azure answers (Service Bus and Event Hubs management APIs, Storage errors):
//! texts by element path with namespace prefixes ignored, and parse errors that never quote the
//! document.

use quick_xml::events::Event;

/// A quick-xml error for a [`PollError`]: a fixed description and the byte offset. Its own
/// text can quote the document (`expected `</a>`, found `</b>``).
pub fn xml_error(e: &quick_xml::Error, at: u64) -> String {
    let what = match e {
        // Fixed texts ("tag not closed: `>` not found before end of input").
        quick_xml::Error::Syntax(s) => s.to_string(),
        quick_xml::Error::IllFormed(_) => "ill-formed XML".to_owned(),
        quick_xml::Error::InvalidAttr(_) => "invalid attribute".to_owned(),
        quick_xml::Error::Encoding(_) => "not UTF-8".to_owned(),
        quick_xml::Error::Escape(_) => "bad escape".to_owned(),
        quick_xml::Error::Namespace(_) => "bad namespace".to_owned(),
        quick_xml::Error::Io(_) => "read error".to_owned(),
    };
    format!("not XML ({what} at byte {at})")
}

/// Calls `f(path, text)` for every text node (local names, prefixes ignored).
pub fn walk_xml(body: &str, mut f: impl FnMut(&[Vec<u8>], &str)) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_str(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut seen = false;
    loop {
        match reader.read_event().map_err(|e| xml_error(&e, reader.error_position()))? {
            Event::Start(e) => {
                seen = true;
                path.push(e.local_name().as_ref().to_vec());
            }
            Event::Empty(_) => seen = true,
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let text = t.decode().map_err(|_| "not UTF-8".to_owned())?;
                f(&path, &text);
            }
            Event::CData(t) => {
                let text = t.decode().map_err(|_| "not UTF-8".to_owned())?;
                f(&path, &text);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if seen { Ok(()) } else { Err("no XML element in the answer".to_owned()) }
}

/// The text of the first element named `local` (any prefix), if the body is XML.
pub fn element_text(body: &str, local: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(body);
    let mut inside = false;
    let mut out = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == local.as_bytes() => inside = true,
            Event::End(e) if inside && e.local_name().as_ref() == local.as_bytes() => return Some(out),
            Event::Text(t) if inside => out.push_str(&t.decode().ok()?),
            Event::GeneralRef(r) if inside => {
                let name = r.decode().ok()?;
                out.push_str(quick_xml::escape::resolve_predefined_entity(&name).unwrap_or_default());
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}
