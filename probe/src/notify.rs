//! systemd readiness (`Type=notify`): one datagram to $NOTIFY_SOCKET.

use std::os::unix::net::UnixDatagram;

use anyhow::{Context, Result};

/// Send `state` (e.g. "READY=1") if systemd asked for notifications.
pub fn notify(state: &str) -> Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send(&path, state),
        None => Ok(()),
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> Result<()> {
    let sock = UnixDatagram::unbound().context("creating the notify socket")?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name).context("NOTIFY_SOCKET abstract address")?;
        sock.send_to_addr(state.as_bytes(), &addr)
    } else {
        sock.send_to(state.as_bytes(), path)
    }
    .with_context(|| format!("notifying systemd at {}", path.to_string_lossy()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("ut-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("sock");
        let _ = std::fs::remove_file(&p);
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        super::send(p.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
