use std::net::{Ipv4Addr, TcpListener};

use crate::Error;

/// Free loopback ports from the kernel (bind port 0, read it back, release it).
///
/// The kernel hands them out from its ephemeral range and does not reuse one at once,
/// but another process may still take one before the component binds it: callers retry
/// a start whose component reports "address already in use".
pub(crate) fn free_ports(count: usize) -> Result<Vec<u16>, Error> {
    // Hold all listeners until every port is known, so the same port is not returned twice.
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::io("binding 127.0.0.1:0 to find a free port", e))?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| Error::io("reading a bound port", e))
        })
        .collect()
}
