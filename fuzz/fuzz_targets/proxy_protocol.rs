//! The PROXY protocol v1/v2 reader on any bytes: no panic, and on success it consumed
//! exactly one header, never a byte of the HTTP request behind it (v1: up to and
//! including the first CRLF, at most 107 bytes; v2: 16 bytes plus the announced length).
#![no_main]

use std::sync::OnceLock;

use gatehouse::proxy::proxy_protocol::read_header;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut rest: &[u8] = data;
    let result = runtime().block_on(read_header(&mut rest));
    let consumed = data.len() - rest.len();
    if result.is_ok() {
        let header = &data[..consumed];
        if header.starts_with(b"PROXY ") {
            assert!(consumed <= 107, "v1 header of {consumed} bytes");
            let first_crlf = header.windows(2).position(|w| w == b"\r\n");
            assert_eq!(first_crlf, Some(consumed - 2), "v1 read past its CRLF");
        } else {
            assert!(consumed >= 16, "v2 header shorter than its fixed part");
            let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
            assert_eq!(consumed, 16 + len, "v2 read more or less than announced");
        }
    }
});
