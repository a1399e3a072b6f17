//! Outbound connections to hosts a tenant names (remote model and voice providers): which
//! addresses are not public, and a resolver that refuses names resolving to them, so a tenant
//! cannot point Parley at its own network, the machine itself or a cloud metadata service.

use std::error::Error;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a target address may not be reached, or `None` for a public unicast address.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let segments = v6.segments();
            if v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
                return Some("a cloud metadata address");
            }
            if v6.is_unspecified() {
                return Some("the unspecified address");
            }
            if v6.is_loopback() {
                return Some("a loopback address");
            }
            if segments[0] & 0xfe00 == 0xfc00 {
                return Some("a unique-local (private) address");
            }
            if segments[0] & 0xffc0 == 0xfe80 || segments[0] & 0xffc0 == 0xfec0 {
                return Some("a link-local address");
            }
            if segments[0] & 0xff00 == 0xff00 {
                return Some("a multicast address");
            }
            if segments[0] == 0x2001 && segments[1] == 0x0db8 {
                return Some("a documentation address");
            }
            // NAT64 (64:ff9b::/96) and the deprecated IPv4-compatible form embed an IPv4 address.
            let embedded =
                Ipv4Addr::new((segments[6] >> 8) as u8, segments[6] as u8, (segments[7] >> 8) as u8, segments[7] as u8);
            let nat64 = segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6].iter().all(|s| *s == 0);
            let compatible = segments[..6].iter().all(|s| *s == 0);
            if nat64 || compatible {
                return forbidden_v4(embedded);
            }
            None
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata address")
    } else if a == 0 {
        Some("the unspecified (\"this network\") address range")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private (RFC 1918) address")
    } else if a == 100 && (b & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if a >= 240 || (a == 192 && b == 0 && c == 0) || (a == 198 && (b & 0xfe) == 18) {
        Some("a reserved address")
    } else if (a == 192 && b == 0 && c == 2) || (a == 198 && b == 51 && c == 100) || (a == 203 && b == 0 && c == 113) {
        Some("a documentation address")
    } else {
        None
    }
}

/// The host of `url` when it is an IP address literal that is not public, with the reason.
pub fn forbidden_literal(url: &reqwest::Url) -> Option<(IpAddr, &'static str)> {
    let host = url.host_str()?;
    let ip: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    forbidden_address(ip).map(|reason| (ip, reason))
}

/// A DNS resolver for reqwest that refuses a name with any address that is not public (a name
/// with a public and a private address could be made to connect to the private one).
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for address in &addresses {
                if let Some(reason) = forbidden_address(address.ip()) {
                    let message =
                        format!("{host} resolves to {}, {reason}; only public addresses may be reached", address.ip());
                    return Err(Box::new(io::Error::new(io::ErrorKind::PermissionDenied, message))
                        as Box<dyn Error + Send + Sync>);
                }
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classification() {
        let refused = [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "2001:db8::1",
        ];
        for address in refused {
            let ip: IpAddr = address.parse().unwrap();
            assert!(forbidden_address(ip).is_some(), "{address} must be refused");
        }
        let allowed = ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"];
        for address in allowed {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(forbidden_address(ip), None, "{address} must be allowed");
        }
        assert_eq!(forbidden_address("169.254.169.254".parse().unwrap()), Some("a cloud metadata address"));
        assert_eq!(forbidden_address("fd00:ec2::254".parse().unwrap()), Some("a cloud metadata address"));
    }

    #[test]
    fn literal_hosts_are_classified() {
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        assert_eq!(
            forbidden_literal(&url("http://169.254.169.254/latest")),
            Some(("169.254.169.254".parse().unwrap(), "a cloud metadata address"))
        );
        assert!(forbidden_literal(&url("http://[::1]:8080/v1")).is_some());
        assert_eq!(forbidden_literal(&url("https://8.8.8.8/v1")), None);
        assert_eq!(forbidden_literal(&url("http://localhost:8080/v1")), None, "names are checked when resolved");
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        let refused = PublicOnly.resolve("localhost".parse().unwrap()).await;
        let error = refused.err().expect("localhost is a loopback name").to_string();
        assert!(error.contains("localhost resolves to") && error.contains("loopback"), "{error}");
    }
}
