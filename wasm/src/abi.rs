//! The numbers and encodings of the proxy-wasm ABI v0.2.1 that the host speaks: status codes,
//! map and buffer kinds, actions, and the serialization of header maps and property paths
//! (spec: proxy-wasm/spec `abi-versions/v0.2.1`, as the Rust, Go and C++ SDKs implement it).

/// `proxy_status_t` (spec "Status codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The key, map, buffer or property does not exist.
    NotFound = 1,
    /// An argument is out of range or malformed.
    BadArgument = 2,
    /// A map or value could not be serialized.
    SerializationFailure = 3,
    /// The guest's memory could not be read or written.
    InvalidMemoryAccess = 6,
    /// The value is empty.
    Empty = 7,
    /// Shared data: the compare-and-swap value does not match.
    CasMismatch = 8,
    /// The host failed.
    InternalFailure = 10,
    /// The host does not implement the call.
    Unimplemented = 12,
}

impl Status {
    /// As returned to the guest.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// `proxy_map_type_t`.
pub mod map {
    /// Request headers.
    pub const REQUEST_HEADERS: i32 = 0;
    /// Request trailers.
    pub const REQUEST_TRAILERS: i32 = 1;
    /// Response headers.
    pub const RESPONSE_HEADERS: i32 = 2;
    /// Response trailers.
    pub const RESPONSE_TRAILERS: i32 = 3;
    /// Headers of a `proxy_http_call`'s answer.
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    /// Trailers of a `proxy_http_call`'s answer.
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// `proxy_buffer_type_t`.
pub mod buffer {
    /// Request body (as buffered so far).
    pub const REQUEST_BODY: i32 = 0;
    /// Response body (the chunks since the last `Continue`).
    pub const RESPONSE_BODY: i32 = 1;
    /// Body of a `proxy_http_call`'s answer.
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    /// `vm_config.configuration`, in `proxy_on_vm_start`.
    pub const VM_CONFIGURATION: i32 = 6;
    /// The filter's `config`, in `proxy_on_configure`.
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// `proxy_action_t`: what the guest returns from a stream callback.
pub const ACTION_CONTINUE: i32 = 0;

/// Serializes a header map as the ABI's `proxy_get_header_map_pairs` returns it: the number of
/// pairs (u32 LE), then each pair's key and value lengths (u32 LE each), then each key and
/// value followed by a NUL byte.
pub fn serialize_map<'a, I>(pairs: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let (mut count, mut size) = (0u32, 4usize);
    for (k, v) in pairs.clone() {
        count += 1;
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&count.to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Reads a map serialized as in [`serialize_map`]; `None` when it is malformed (lengths that
/// run past the end).
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0)?;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        let (kl, vl) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let key = bytes.get(data..data + kl)?.to_vec();
        data += kl + 1;
        let value = bytes.get(data..data + vl)?.to_vec();
        data += vl + 1;
        pairs.push((key, value));
    }
    Some(pairs)
}

/// Splits a property path as the SDKs serialize it (segments joined by NUL bytes).
pub fn property_path(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_in_the_sdk_layout() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/"), (b"x-a", b"")];
        let bytes = serialize_map(pairs.iter().copied());
        // The proxy-wasm Rust SDK's own test vector for the same two pairs' layout.
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..12], &[5, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&bytes[20..], b":path\0/\0x-a\0\0");
        let back = deserialize_map(&bytes).unwrap();
        assert_eq!(
            back,
            vec![
                (b":path".to_vec(), b"/".to_vec()),
                (b"x-a".to_vec(), vec![])
            ]
        );
        assert_eq!(deserialize_map(&bytes[..bytes.len() - 3]), None);
        assert_eq!(deserialize_map(&[]), Some(vec![]));
    }

    #[test]
    fn property_paths_split_on_nul() {
        assert_eq!(
            property_path(b"request\0path"),
            vec![&b"request"[..], b"path"]
        );
    }
}
