//! `entitled.v1.Report`, written by hand instead of generated (`build.rs`
//! maps it here with `extern_path`), wire-compatible with
//! `proto/entitled/v1/access.proto`, which stays the definition.
//!
//! Its strings are `Arc<str>` rather than `String`: a check answers with the
//! same few report lists over and over, and the profile showed that copying
//! and freeing two strings per report was half of the check's own work
//! (callgrind, 12 reports: about 4,800 of 9,750 instructions per check).
//! Sharing them costs a reference count each.

use std::sync::Arc;

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType},
};

use super::v1::ReportKind;

#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct Report {
    pub id: Arc<str>,
    pub display_name: Arc<str>,
    /// A `ReportKind`.
    pub kind: i32,
    /// Live reports are available at once; historical ones once data is
    /// ready.
    pub available: bool,
}

impl Report {
    /// The kind, or the default for a value this version does not know (as
    /// generated enum getters do).
    pub fn kind(&self) -> ReportKind {
        ReportKind::try_from(self.kind).unwrap_or_default()
    }
}

const ID: u32 = 1;
const DISPLAY_NAME: u32 = 2;
const KIND: u32 = 3;
const AVAILABLE: u32 = 4;

fn encode_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

fn str_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(value.len() as u64) + value.len()
    }
}

fn merge_str(
    value: &mut Arc<str>,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    // Clients decode these too: build the `Arc<str>` straight from the
    // buffer (one allocation) when the string is whole in its first chunk.
    if wire_type == WireType::LengthDelimited {
        let chunk = buf.chunk();
        let mut rest = chunk;
        if let Ok(len) = encoding::decode_varint(&mut rest)
            && let Ok(len) = usize::try_from(len)
            && let Some(bytes) = rest.get(..len)
            && let Ok(text) = std::str::from_utf8(bytes)
        {
            *value = Arc::from(text);
            let consumed = chunk.len() - rest.len() + len;
            buf.advance(consumed);
            return Ok(());
        }
    }
    // Otherwise (split buffers, errors) as generated code does it.
    let mut s = String::new();
    encoding::string::merge(wire_type, &mut s, buf, ctx)?;
    *value = s.into();
    Ok(())
}

impl Message for Report {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_str(ID, &self.id, buf);
        encode_str(DISPLAY_NAME, &self.display_name, buf);
        if self.kind != 0 {
            encoding::int32::encode(KIND, &self.kind, buf);
        }
        if self.available {
            encoding::bool::encode(AVAILABLE, &self.available, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            ID => merge_str(&mut self.id, wire_type, buf, ctx),
            DISPLAY_NAME => merge_str(&mut self.display_name, wire_type, buf, ctx),
            KIND => encoding::int32::merge(wire_type, &mut self.kind, buf, ctx),
            AVAILABLE => encoding::bool::merge(wire_type, &mut self.available, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        str_len(ID, &self.id)
            + str_len(DISPLAY_NAME, &self.display_name)
            + if self.kind != 0 {
                encoding::int32::encoded_len(KIND, &self.kind)
            } else {
                0
            }
            + if self.available {
                encoding::bool::encoded_len(AVAILABLE, &self.available)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = Report::default();
    }
}

#[cfg(test)]
mod tests {
    use prost::bytes::Buf as _;

    use super::*;

    /// The generated type this one stands in for, with `String` fields.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(string, tag = "2")]
        display_name: String,
        #[prost(enumeration = "ReportKind", tag = "3")]
        kind: i32,
        #[prost(bool, tag = "4")]
        available: bool,
    }

    #[test]
    fn encodes_and_decodes_as_the_generated_type_would() {
        let cases = [
            Generated {
                id: "active-calls".into(),
                display_name: "Active Calls".into(),
                kind: ReportKind::Live as i32,
                available: true,
            },
            Generated {
                id: "call-quality".into(),
                display_name: "Call Quality — é".into(),
                kind: ReportKind::Historical as i32,
                available: false,
            },
            Generated::default(),
        ];
        for generated in cases {
            let ours = Report {
                id: generated.id.as_str().into(),
                display_name: generated.display_name.as_str().into(),
                kind: generated.kind,
                available: generated.available,
            };
            let bytes = generated.encode_to_vec();
            assert_eq!(ours.encode_to_vec(), bytes);
            assert_eq!(ours.encoded_len(), bytes.len());
            assert_eq!(Report::decode(bytes.as_slice()).unwrap(), ours);
            assert_eq!(
                Generated::decode(ours.encode_to_vec().as_slice()).unwrap(),
                generated
            );
        }
    }

    #[test]
    fn decodes_from_a_buffer_split_mid_string() {
        let bytes = Report {
            id: "active-calls".into(),
            display_name: "Active Calls".into(),
            kind: ReportKind::Live as i32,
            available: true,
        }
        .encode_to_vec();
        for cut in 1..bytes.len() {
            let split = (&bytes[..cut]).chain(&bytes[cut..]);
            let decoded = Report::decode(split).unwrap();
            assert_eq!(&*decoded.display_name, "Active Calls", "cut at {cut}");
            assert_eq!(&*decoded.id, "active-calls", "cut at {cut}");
        }
    }

    #[test]
    fn refuses_a_string_that_is_not_utf8() {
        let bytes = [0x0a, 0x02, 0xff, 0xfe];
        assert!(Report::decode(&bytes[..]).is_err());
        let truncated = [0x0a, 0x05, b'a'];
        assert!(Report::decode(&truncated[..]).is_err());
    }

    #[test]
    fn skips_fields_it_does_not_know() {
        // Field 9 (varint 7), then id "x".
        let bytes = [0x48, 0x07, 0x0a, 0x01, b'x'];
        let decoded = Report::decode(&bytes[..]).unwrap();
        assert_eq!(&*decoded.id, "x");
    }
}
