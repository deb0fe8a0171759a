//! Service Bus management answers: ATOM entries with their counts.

use quick_xml::events::Event;

use crate::PollError;
use crate::azure::xml::xml_error;

/// One `<entry>`: the entity name and its counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AtomEntry {
    pub title: String,
    pub count_details: bool,
    pub active: Option<String>,
}

impl AtomEntry {
    /// `ActiveMessageCount`; `Throttled` without `CountDetails`.
    pub fn active_count(&self, what: &str) -> Result<i64, PollError> {
        if !self.count_details {
            return Err(PollError::Throttled {
                detail: format!(
                    "{what}: invalid runtime properties: no CountDetails element \
                     (Service Bus answers so when it throttles)"
                ),
                retry_after: None,
            });
        }
        let text = self.active.as_deref().map(str::trim).unwrap_or_default();
        text.parse::<u64>()
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| PollError::Malformed(format!("{what}: ActiveMessageCount is not a count")))
    }
}

/// An `<entry>` or a `<feed>` of entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AtomDoc {
    pub entries: Vec<AtomEntry>,
    /// The feed has `<link rel="next">`.
    pub next: bool,
}

/// Reads the entries of an ATOM answer, ignoring namespace prefixes.
pub fn parse_atom(body: &str) -> Result<AtomDoc, String> {
    let mut reader = quick_xml::Reader::from_str(body);
    let mut doc = AtomDoc::default();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut entry: Option<AtomEntry> = None;
    let mut root_seen = false;
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&e, reader.error_position()))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = e.local_name().as_ref().to_vec();
                let empty = matches!(event, Event::Empty(_));
                if !root_seen {
                    root_seen = true;
                    if name != b"feed" && name != b"entry" {
                        return Err("not an ATOM feed or entry".to_owned());
                    }
                }
                let parent = path.last().map(Vec::as_slice);
                if name == b"entry" && (path.is_empty() || parent == Some(b"feed")) {
                    entry = Some(AtomEntry::default());
                } else if name == b"CountDetails" {
                    if let Some(en) = entry.as_mut() {
                        en.count_details = true;
                    }
                } else if name == b"link" && path.len() == 1 && parent == Some(b"feed") {
                    let rel = e.try_get_attribute("rel").ok().flatten();
                    if rel.is_some_and(|a| a.value.as_ref() == b"next") {
                        doc.next = true;
                    }
                }
                if empty {
                    if name == b"entry" {
                        doc.entries.extend(entry.take());
                    }
                } else {
                    path.push(name);
                }
            }
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                if name == b"entry"
                    && (path.is_empty() || path.last().map(Vec::as_slice) == Some(b"feed"))
                    && let Some(mut en) = entry.take()
                {
                    en.title = en.title.trim().to_owned();
                    doc.entries.push(en);
                }
            }
            Event::Text(ref t) => {
                let text = t.decode().map_err(|_| "not UTF-8".to_owned())?;
                push_text(&path, entry.as_mut(), &text);
            }
            Event::CData(ref t) => {
                let text = t.decode().map_err(|_| "not UTF-8".to_owned())?;
                push_text(&path, entry.as_mut(), &text);
            }
            Event::GeneralRef(ref r) => {
                let text = match r.resolve_char_ref().map_err(|_| "bad character reference".to_owned())? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|_| "not UTF-8".to_owned())?;
                        quick_xml::escape::resolve_predefined_entity(&name).unwrap_or_default().to_owned()
                    }
                };
                push_text(&path, entry.as_mut(), &text);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen {
        return Err("no XML element in the answer".to_owned());
    }
    Ok(doc)
}

/// Appends text to the entry's title or active count, by where the reader is.
fn push_text(path: &[Vec<u8>], entry: Option<&mut AtomEntry>, text: &str) {
    let Some(entry) = entry else { return };
    let n = path.len();
    let (Some(here), Some(parent)) = (n.checked_sub(1).map(|i| &path[i]), n.checked_sub(2).map(|i| &path[i])) else {
        return;
    };
    if here == b"title" && parent == b"entry" {
        entry.title.push_str(text);
    } else if here == b"ActiveMessageCount" && parent == b"CountDetails" {
        entry.active.get_or_insert_with(String::new).push_str(text);
    }
}
