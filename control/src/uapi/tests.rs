use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::parse::parse_request_bytes;
use super::*;

// Keys below are throwaway ones made with `wg genkey` for these fixtures.
const PRIV: &str = "a05c5e7df8f5556017be028d480e34458b2a3b041d5f6020b4a1d2381382b367";
const PUB1: &str = "852ced7eda9362a75e1bebe02539e637548c7e4c8e824debd0b5f5ee7cd7eb01";
const PUB2: &str = "48efa0823864eb86fba26951a6f9c73e64f3ffc819f784b9d2763023c4bf1145";
const PSK: &str = "58bb8f60496fd7250a141e944f0c2126945e1e8da3ffbd58ea0291d699b10b1f";
const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Byte-exact requests captured from wireguard-tools v1.0.20210914 (Debian) talking to a
/// recording socket at /var/run/wireguard/IFNAME.sock, one per command in the comment.
mod wg_sent {
    /// `wg set IF private-key K listen-port 51820 fwmark 0x1234 peer P endpoint 1.2.3.4:51820
    /// allowed-ips 10.0.0.0/24,fd00::1/128 persistent-keepalive 25 preshared-key PSK`
    pub const SET_FULL: &str = "set=1\n\
        private_key=a05c5e7df8f5556017be028d480e34458b2a3b041d5f6020b4a1d2381382b367\n\
        listen_port=51820\n\
        fwmark=4660\n\
        public_key=852ced7eda9362a75e1bebe02539e637548c7e4c8e824debd0b5f5ee7cd7eb01\n\
        preshared_key=58bb8f60496fd7250a141e944f0c2126945e1e8da3ffbd58ea0291d699b10b1f\n\
        endpoint=1.2.3.4:51820\n\
        persistent_keepalive_interval=25\n\
        replace_allowed_ips=true\n\
        allowed_ip=10.0.0.0/24\n\
        allowed_ip=fd00::1/128\n\
        \n";
    /// `wg set IF peer P remove`
    pub const REMOVE: &str = "set=1\n\
        public_key=852ced7eda9362a75e1bebe02539e637548c7e4c8e824debd0b5f5ee7cd7eb01\n\
        remove=true\n\
        \n";
    /// `wg set IF peer P2 endpoint [fe80::1]:51820 allowed-ips "" persistent-keepalive off`
    pub const CLEAR_IPS_KEEPALIVE_OFF: &str = "set=1\n\
        public_key=48efa0823864eb86fba26951a6f9c73e64f3ffc819f784b9d2763023c4bf1145\n\
        endpoint=[fe80::1]:51820\n\
        persistent_keepalive_interval=0\n\
        replace_allowed_ips=true\n\
        \n";
    /// `wg set IF private-key /empty-file`
    pub const CLEAR_PRIVATE_KEY: &str = "set=1\n\
        private_key=0000000000000000000000000000000000000000000000000000000000000000\n\
        \n";
    /// `wg set IF listen-port 0 fwmark off peer P2 preshared-key /empty-file endpoint 10.1.1.1:1`
    pub const ZEROS: &str = "set=1\n\
        listen_port=0\n\
        fwmark=0\n\
        public_key=48efa0823864eb86fba26951a6f9c73e64f3ffc819f784b9d2763023c4bf1145\n\
        preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
        endpoint=10.1.1.1:1\n\
        \n";
    /// `wg setconf IF conf` (PrivateKey, ListenPort 4000, one peer, AllowedIPs = 0.0.0.0/0, ::/0,
    /// Endpoint = [::1]:4001)
    pub const SETCONF: &str = "set=1\n\
        private_key=a05c5e7df8f5556017be028d480e34458b2a3b041d5f6020b4a1d2381382b367\n\
        listen_port=4000\n\
        fwmark=0\n\
        replace_peers=true\n\
        public_key=852ced7eda9362a75e1bebe02539e637548c7e4c8e824debd0b5f5ee7cd7eb01\n\
        endpoint=[::1]:4001\n\
        replace_allowed_ips=true\n\
        allowed_ip=0.0.0.0/0\n\
        allowed_ip=::/0\n\
        \n";
    /// `wg addconf IF conf` (same file)
    pub const ADDCONF: &str = "set=1\n\
        private_key=a05c5e7df8f5556017be028d480e34458b2a3b041d5f6020b4a1d2381382b367\n\
        listen_port=4000\n\
        public_key=852ced7eda9362a75e1bebe02539e637548c7e4c8e824debd0b5f5ee7cd7eb01\n\
        endpoint=[::1]:4001\n\
        replace_allowed_ips=true\n\
        allowed_ip=0.0.0.0/0\n\
        allowed_ip=::/0\n\
        \n";
    /// `wg show IF` / `wg showconf IF`
    pub const GET: &str = "get=1\n\n";

    pub const ALL: [&str; 8] = [
        SET_FULL,
        REMOVE,
        CLEAR_IPS_KEEPALIVE_OFF,
        CLEAR_PRIVATE_KEY,
        ZEROS,
        SETCONF,
        ADDCONF,
        GET,
    ];
}

fn key(hex_key: &str) -> Key {
    let mut out = [0; 32];
    hex::decode_to_slice(hex_key, &mut out).expect("fixture key is 64 hex digits");
    out
}

fn ip(text: &str) -> AllowedIp {
    text.parse().expect("fixture allowed IP is valid")
}

fn set(text: &str) -> SetRequest {
    match parse_request(text) {
        Ok(Request::Set(set)) => set,
        other => panic!("expected a set request from {text:?}, got {other:?}"),
    }
}

fn parse_err(text: &str) -> UapiError {
    match parse_request(text) {
        Err(err) => err,
        Ok(request) => panic!("expected an error from {text:?}, got {request:?}"),
    }
}

fn set_with(lines: &str) -> String {
    format!("set=1\n{lines}\n")
}

fn peer_with(lines: &str) -> String {
    format!("set=1\npublic_key={PUB1}\n{lines}\n")
}

// ---------------------------------------------------------------------------------------------
// What wg sends

#[test]
fn wg_set_with_every_peer_option() {
    let set = set(wg_sent::SET_FULL);
    assert_eq!(set.private_key, Some(key(PRIV)));
    assert_eq!(set.listen_port, Some(51820));
    assert_eq!(set.fwmark, Some(0x1234));
    assert!(!set.replace_peers);
    assert_eq!(set.peers.len(), 1);
    let peer = &set.peers[0];
    assert_eq!(peer.public_key, key(PUB1));
    assert!(!peer.remove && !peer.update_only);
    assert_eq!(peer.preshared_key, Some(key(PSK)));
    assert_eq!(peer.endpoint, Some("1.2.3.4:51820".parse().unwrap()));
    assert_eq!(peer.persistent_keepalive_interval, Some(25));
    assert!(peer.replace_allowed_ips);
    assert_eq!(peer.allowed_ips, [ip("10.0.0.0/24"), ip("fd00::1/128")]);
}

#[test]
fn wg_remove_peer() {
    let set = set(wg_sent::REMOVE);
    assert_eq!(set.private_key, None);
    assert_eq!(set.listen_port, None);
    assert_eq!(set.fwmark, None);
    let mut expected = PeerChange::new(key(PUB1));
    expected.remove = true;
    assert_eq!(set.peers, [expected]);
}

#[test]
fn wg_empty_allowed_ips_and_keepalive_off() {
    let set = set(wg_sent::CLEAR_IPS_KEEPALIVE_OFF);
    let peer = &set.peers[0];
    assert_eq!(peer.public_key, key(PUB2));
    assert_eq!(
        peer.endpoint,
        Some(SocketAddr::new("fe80::1".parse().unwrap(), 51820))
    );
    assert_eq!(peer.persistent_keepalive_interval, Some(0));
    assert!(peer.replace_allowed_ips);
    assert!(peer.allowed_ips.is_empty());
}

#[test]
fn wg_clears_private_key_with_zeros() {
    let set = set(wg_sent::CLEAR_PRIVATE_KEY);
    assert_eq!(set.private_key, Some([0; 32]));
    assert!(set.peers.is_empty());
}

#[test]
fn wg_zero_values_mean_clear() {
    let set = set(wg_sent::ZEROS);
    assert_eq!(set.listen_port, Some(0));
    assert_eq!(set.fwmark, Some(0));
    assert_eq!(set.peers[0].preshared_key, Some([0; 32]));
    assert_eq!(set.peers[0].endpoint, Some("10.1.1.1:1".parse().unwrap()));
}

#[test]
fn wg_setconf_replaces_peers() {
    let set = set(wg_sent::SETCONF);
    assert!(set.replace_peers);
    assert_eq!(set.fwmark, Some(0));
    assert_eq!(set.peers[0].endpoint, Some("[::1]:4001".parse().unwrap()));
    assert_eq!(set.peers[0].allowed_ips, [ip("0.0.0.0/0"), ip("::/0")]);
    let addconf = self::set(wg_sent::ADDCONF);
    assert!(!addconf.replace_peers);
    assert_eq!(addconf.fwmark, None);
    assert_eq!(addconf.peers, set.peers);
}

#[test]
fn wg_get() {
    assert_eq!(parse_request(wg_sent::GET), Ok(Request::Get));
    assert_eq!(Request::Get.operation(), Operation::Get);
}

#[test]
fn format_request_reproduces_wg_byte_for_byte() {
    for text in wg_sent::ALL {
        let request = parse_request(text).unwrap();
        assert_eq!(format_request(&request), text);
    }
}

// ---------------------------------------------------------------------------------------------
// Every key on its own

#[test]
fn every_device_key() {
    assert_eq!(
        set(&set_with(&format!("private_key={PRIV}\n"))).private_key,
        Some(key(PRIV))
    );
    assert_eq!(
        set(&set_with("listen_port=65535\n")).listen_port,
        Some(65535)
    );
    assert_eq!(
        set(&set_with("listen_port=051820\n")).listen_port,
        Some(51820)
    );
    assert_eq!(set(&set_with("fwmark=4294967295\n")).fwmark, Some(u32::MAX));
    assert!(set(&set_with("replace_peers=true\n")).replace_peers);
    assert_eq!(set(&set_with("")), SetRequest::default());
}

#[test]
fn every_peer_key() {
    let peer = |lines: &str| set(&peer_with(lines)).peers.remove(0);
    assert_eq!(peer(""), PeerChange::new(key(PUB1)));
    assert!(peer("remove=true\n").remove);
    assert!(peer("update_only=true\n").update_only);
    assert_eq!(
        peer(&format!("preshared_key={PSK}\n")).preshared_key,
        Some(key(PSK))
    );
    assert_eq!(
        peer(&format!("preshared_key={ZERO}\n")).preshared_key,
        Some([0; 32])
    );
    assert_eq!(
        peer("endpoint=[2001:db8::1]:65535\n").endpoint,
        Some("[2001:db8::1]:65535".parse().unwrap())
    );
    assert_eq!(
        peer("persistent_keepalive_interval=65535\n").persistent_keepalive_interval,
        Some(65535)
    );
    assert!(peer("replace_allowed_ips=true\n").replace_allowed_ips);
    assert_eq!(
        peer("allowed_ip=192.168.1.7/32\n").allowed_ips,
        [ip("192.168.1.7/32")]
    );
    assert_eq!(peer("protocol_version=1\n"), PeerChange::new(key(PUB1)));
}

#[test]
fn keys_accept_upper_case_hex() {
    let upper = PUB1.to_uppercase();
    let set = set(&format!("set=1\npublic_key={upper}\n\n"));
    assert_eq!(set.peers[0].public_key, key(PUB1));
}

#[test]
fn endpoint_with_numeric_scope_and_mapped_v4() {
    let with_scope = set(&peer_with("endpoint=[fe80::1%3]:51820\n")).peers[0].endpoint;
    assert_eq!(
        with_scope,
        Some(SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            51820,
            0,
            3
        )))
    );
    let mapped = set(&peer_with("endpoint=[::ffff:1.2.3.4]:9\n")).peers[0].endpoint;
    assert_eq!(mapped, Some("[::ffff:1.2.3.4]:9".parse().unwrap()));
}

fn fake_if_nametoindex(name: &str) -> Option<u32> {
    match name {
        "lo" => Some(1),
        "eth0" => Some(2),
        _ => None,
    }
}

#[test]
fn named_scope_needs_a_resolver() {
    // What `wg set IF peer P endpoint [fe80::1%eth0]:51820` sends.
    let text = peer_with("endpoint=[fe80::1%eth0]:51820\n");
    assert_eq!(parse_err(&text).errno(), errno::EINVAL);
    let expected = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 51820, 0, 2));
    match parse_request_with_scopes(&text, Some(fake_if_nametoindex)) {
        Ok(Request::Set(set)) => assert_eq!(set.peers[0].endpoint, Some(expected)),
        other => panic!("{other:?}"),
    }
    let mut framer = RequestFramer::new().with_scope_resolver(fake_if_nametoindex);
    framer.push(text.as_bytes()).unwrap();
    assert!(matches!(framer.next_request(), Some(Ok(Request::Set(_)))));
    for bad in [
        "[fe80::1%wlan9]:1",
        "[fe80::1%eth0]:",
        "[fe80::1%eth0]:65536",
        "[fe80::1%eth0]:+1",
        "[fe80::zz%eth0]:1",
        "[1.2.3.4%eth0]:1",
        "[fe80::1%eth0]",
        "fe80::1%eth0:1",
    ] {
        let text = peer_with(&format!("endpoint={bad}\n"));
        let err = parse_request_with_scopes(&text, Some(fake_if_nametoindex)).unwrap_err();
        assert_eq!(err.errno(), errno::EINVAL, "{bad}");
    }
}

#[test]
fn lines_apply_in_order() {
    // Later device values win, as when wireguard-go applies each line.
    let set1 = set(&set_with("listen_port=1\nlisten_port=2\n"));
    assert_eq!(set1.listen_port, Some(2));
    // replace_allowed_ips wipes the entries above it in the same peer block.
    let peer = set(&peer_with(
        "allowed_ip=10.0.0.0/8\nreplace_allowed_ips=true\nallowed_ip=10.1.0.0/16\n",
    ))
    .peers
    .remove(0);
    assert!(peer.replace_allowed_ips);
    assert_eq!(peer.allowed_ips, [ip("10.1.0.0/16")]);
    // A repeated public key is a second change to apply after the first.
    let text = format!(
        "set=1\npublic_key={PUB1}\nallowed_ip=10.0.0.1/32\npublic_key={PUB2}\npublic_key={PUB1}\nremove=true\n\n"
    );
    let peers = set(&text).peers;
    assert_eq!(peers.len(), 3);
    assert_eq!(peers[0].allowed_ips, [ip("10.0.0.1/32")]);
    assert_eq!(peers[1].public_key, key(PUB2));
    assert!(peers[2].remove && peers[2].public_key == key(PUB1));
}

// ---------------------------------------------------------------------------------------------
// Allowed IPs

#[test]
fn allowed_ip_validates_and_canonicalises() {
    assert_eq!(ip("10.0.0.1/24").to_string(), "10.0.0.0/24");
    assert_eq!(ip("10.9.8.7/0").to_string(), "0.0.0.0/0");
    assert_eq!(ip("10.9.8.7/32").to_string(), "10.9.8.7/32");
    assert_eq!(ip("fd00::1:2/64").to_string(), "fd00::/64");
    assert_eq!(ip("fd00::1/128").to_string(), "fd00::1/128");
    assert_eq!(ip("2001:db8::1/0").to_string(), "::/0");
    assert_eq!(ip("10.0.0.1/24"), ip("10.0.0.0/24"));
    let v6 = AllowedIp::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).unwrap();
    assert_eq!(
        (v6.addr(), v6.cidr()),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), 128)
    );
    assert!(AllowedIp::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 33).is_none());
    assert!(AllowedIp::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 129).is_none());
    assert_eq!(format!("{:?}", ip("10.0.0.0/8")), "10.0.0.0/8");
    for bad in [
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0",
        "10.0.0.0/",
        "/8",
        "10.0.0.0/024",
        "10.0.0.0/+8",
        "10.0.0.0/-1",
        "10.0.0.0/8/8",
        "10.0.0/8",
        "010.0.0.0/8",
        "fe80::1%2/64",
        "-10.0.0.0/8",
        "10.0.0.0/256",
        "10.0.0.0/99999999999999999999",
        " 10.0.0.0/8",
    ] {
        let err = bad.parse::<AllowedIp>().unwrap_err();
        assert_eq!(err.errno(), errno::EINVAL, "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn malformed_requests_are_protocol_errors() {
    for bad in [
        "",
        "\n",
        "get=1",
        "get=1\n",
        "set=1\n",
        "set=1\nlisten_port=1\n",
        "set=1\r\n\r\n",
        "hello=1\n\n",
        "get=2\n\n",
        "set=0\n\n",
        "get\n\n",
        "GET=1\n\n",
        "get=1\n\nget=1\n\n",
        "set=1\n\nlisten_port=1\n\n",
        "set=1\nlisten_port\n\n",
        "set=1\nlisten_port=1\nfoo\n\n",
        // peer keys before any public_key
        "set=1\nremove=true\n\n",
        "set=1\nendpoint=1.2.3.4:1\n\n",
        "set=1\nallowed_ip=10.0.0.0/8\n\n",
        "set=1\nprotocol_version=1\n\n",
        "set=1\nupdate_only=true\n\n",
        "set=1\nreplace_allowed_ips=true\n\n",
        "set=1\npersistent_keepalive_interval=1\n\n",
        "set=1\npreshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\n",
    ] {
        let err = parse_err(bad);
        assert_eq!(err.errno(), errno::EPROTO, "{bad:?}: {err}");
    }
    // device keys after a peer
    for key_line in [
        "listen_port=1",
        "fwmark=1",
        "replace_peers=true",
        &format!("private_key={PRIV}"),
    ] {
        let err = parse_err(&peer_with(&format!("{key_line}\n")));
        assert_eq!(err.errno(), errno::EPROTO, "{key_line}");
    }
    let not_utf8 = parse_request_bytes(b"set=1\nlisten_port=\xff\n\n", None).unwrap_err();
    assert_eq!(not_utf8.errno(), errno::EPROTO);
}

#[test]
fn bad_keys_and_values_are_invalid() {
    let odd = &PRIV[..63];
    let long = format!("{PRIV}0");
    let short = &PRIV[..62];
    let nonhex = format!("{}zz", &PRIV[..62]);
    let mut cases: Vec<String> = vec![
        set_with("bogus=1\n"),
        set_with("=1\n"),
        set_with("listen_port=65536\n"),
        set_with("listen_port=-1\n"),
        set_with("listen_port=+5\n"),
        set_with("listen_port=\n"),
        set_with("listen_port= 1\n"),
        set_with("listen_port=0x10\n"),
        set_with("fwmark=4294967296\n"),
        set_with("fwmark=0x1234\n"),
        set_with("replace_peers=false\n"),
        set_with("replace_peers=TRUE\n"),
        set_with("replace_peers=\n"),
        set_with("public_key=\n"),
        peer_with("bogus=1\n"),
        peer_with("remove=1\n"),
        peer_with("update_only=false\n"),
        peer_with("replace_allowed_ips=yes\n"),
        peer_with("protocol_version=2\n"),
        peer_with("protocol_version=\n"),
        peer_with("persistent_keepalive_interval=65536\n"),
        peer_with("persistent_keepalive_interval=off\n"),
        peer_with("endpoint=\n"),
        peer_with("endpoint=1.2.3.4\n"),
        peer_with("endpoint=1.2.3.4:65536\n"),
        peer_with("endpoint=1.2.3.4:+1\n"),
        peer_with("endpoint=example.com:51820\n"),
        peer_with("endpoint=fe80::1:51820\n"),
        peer_with("endpoint=[fe80::1%eth0]:51820\n"),
        peer_with("allowed_ip=10.0.0.0/33\n"),
        peer_with("allowed_ip=-10.0.0.0/8\n"),
        peer_with("allowed_ip=10.0.0.0/8,10.1.0.0/16\n"),
        "get=1\nprivate_key=1\n\n".to_owned(),
    ];
    for bad_key in [odd, &long, short, &nonhex, ""] {
        cases.push(set_with(&format!("private_key={bad_key}\n")));
        cases.push(set_with(&format!("public_key={bad_key}\n")));
        cases.push(peer_with(&format!("preshared_key={bad_key}\n")));
    }
    for bad in cases {
        let err = parse_err(&bad);
        assert_eq!(err.errno(), errno::EINVAL, "{bad:?}: {err}");
    }
}

#[test]
fn errors_carry_their_operation() {
    assert_eq!(
        parse_err("get=1\nx=1\n\n").operation(),
        Some(Operation::Get)
    );
    assert_eq!(
        parse_err(&set_with("x=1\n")).operation(),
        Some(Operation::Set)
    );
    assert_eq!(parse_err("nope\n\n").operation(), None);
}

#[test]
fn error_messages_name_the_line_and_hide_secrets() {
    let err = parse_err(&set_with(&format!(
        "listen_port=1\nprivate_key={}\n",
        &PRIV[..63]
    )));
    assert!(err.message().starts_with("line 3:"), "{err}");
    assert!(!err.message().contains(&PRIV[..16]), "{err}");
    let err = parse_err(&peer_with(&format!("preshared_key={}x\n", &PSK[..63])));
    assert!(!err.message().contains(&PSK[..16]), "{err}");
    // A huge value is quoted only in part.
    let huge = "9".repeat(100_000);
    let err = parse_err(&set_with(&format!("listen_port={huge}\n")));
    assert!(err.message().len() < 200, "{}", err.message().len());
    // Control characters are escaped, not written raw into logs.
    let err = parse_err("set=1\nbad\u{1b}[31m=1\n\n");
    assert!(!err.message().contains('\u{1b}'), "{err}");
    // Multi-byte characters at the cut do not split a UTF-8 sequence.
    let err = parse_err(&set_with(&format!("{}=1\n", "é".repeat(100))));
    assert!(err.message().contains("..."));
}

#[test]
fn uapi_error_basics() {
    let err = UapiError::invalid("bad");
    assert_eq!(err.errno(), errno::EINVAL);
    assert_eq!(err.to_string(), format!("bad (errno {})", errno::EINVAL));
    assert_eq!(UapiError::protocol("x").errno(), errno::EPROTO);
    assert_eq!(UapiError::io("x").errno(), errno::EIO);
    assert_eq!(UapiError::address_in_use("x").errno(), errno::EADDRINUSE);
    // Zero would read as success; negative input is taken as its magnitude.
    assert_eq!(UapiError::new(0, "x").errno(), errno::EIO);
    assert_eq!(UapiError::new(-22, "x").errno(), 22);
    assert_eq!(UapiError::new(i32::MIN, "x").errno(), i32::MAX);
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert_eq!(boxed.to_string(), format!("bad (errno {})", errno::EINVAL));
}

#[test]
#[cfg(target_os = "linux")]
fn errno_values_match_linux() {
    assert_eq!(
        (
            errno::EIO,
            errno::EINVAL,
            errno::EPROTO,
            errno::EADDRINUSE,
            errno::EMSGSIZE
        ),
        (5, 22, 71, 98, 90)
    );
}

#[test]
fn errno_sign_follows_what_wg_parses() {
    // wg set: "errno=-22" is "Invalid argument"; "errno=22" would print "Unknown error -22".
    let set_err = UapiError::invalid("x").with_operation(Operation::Set);
    assert_eq!(
        format_errno(&set_err),
        format!("errno=-{}\n\n", errno::EINVAL)
    );
    // wg show: only digits parse; "errno=-22" would print "Protocol error".
    let get_err = UapiError::io("x").with_operation(Operation::Get);
    assert_eq!(format_errno(&get_err), format!("errno={}\n\n", errno::EIO));
    // Unknown operation: wireguard-go's sign.
    assert_eq!(
        format_errno(&UapiError::protocol("x")),
        format!("errno=-{}\n\n", errno::EPROTO)
    );
}

#[test]
fn debug_output_redacts_secrets() {
    let request = set(wg_sent::SET_FULL);
    let text = format!("{request:?}");
    assert!(!text.contains(PRIV) && !text.contains(PSK), "{text}");
    assert!(text.contains(PUB1) && text.contains("<redacted>"), "{text}");
    let cleared = format!("{:?}", set(wg_sent::CLEAR_PRIVATE_KEY));
    assert!(cleared.contains("Some(<zero>)"), "{cleared}");
    let info = sample_device();
    let text = format!("{info:?}");
    assert!(!text.contains(PRIV) && !text.contains(PSK), "{text}");
}

// ---------------------------------------------------------------------------------------------
// get responses

fn sample_device() -> DeviceInfo {
    let mut first = PeerInfo::new(key(PUB1));
    first.preshared_key = Some(key(PSK));
    first.endpoint = Some("1.2.3.4:51820".parse().unwrap());
    first.last_handshake = Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789));
    first.rx_bytes = 1234;
    first.tx_bytes = u64::MAX;
    first.persistent_keepalive_interval = 25;
    first.allowed_ips = vec![ip("10.0.0.0/24"), ip("fd00::/64")];
    let second = PeerInfo::new(key(PUB2));
    DeviceInfo {
        private_key: Some(key(PRIV)),
        listen_port: 51820,
        fwmark: 0x1234,
        peers: vec![first, second],
    }
}

#[test]
fn get_response_lines_and_order_match_wireguard_go() {
    let expected = format!(
        "private_key={PRIV}\n\
         listen_port=51820\n\
         fwmark=4660\n\
         public_key={PUB1}\n\
         preshared_key={PSK}\n\
         protocol_version=1\n\
         endpoint=1.2.3.4:51820\n\
         last_handshake_time_sec=1700000000\n\
         last_handshake_time_nsec=123456789\n\
         tx_bytes=18446744073709551615\n\
         rx_bytes=1234\n\
         persistent_keepalive_interval=25\n\
         allowed_ip=10.0.0.0/24\n\
         allowed_ip=fd00::/64\n\
         public_key={PUB2}\n\
         preshared_key={ZERO}\n\
         protocol_version=1\n\
         last_handshake_time_sec=0\n\
         last_handshake_time_nsec=0\n\
         tx_bytes=0\n\
         rx_bytes=0\n\
         persistent_keepalive_interval=0\n\
         errno=0\n\
         \n"
    );
    assert_eq!(format_get_response(&sample_device()), expected);
}

#[test]
fn get_response_omits_unset_device_fields() {
    assert_eq!(format_get_response(&DeviceInfo::default()), "errno=0\n\n");
    let zero_key = DeviceInfo {
        private_key: Some([0; 32]),
        ..DeviceInfo::default()
    };
    assert_eq!(format_get_response(&zero_key), "errno=0\n\n");
    let mut peer = PeerInfo::new(key(PUB1));
    peer.last_handshake = Some(UNIX_EPOCH - Duration::from_secs(5));
    peer.endpoint = Some("[fe80::1%7]:9".parse().unwrap());
    let text = format_get_response(&DeviceInfo {
        peers: vec![peer],
        ..DeviceInfo::default()
    });
    assert!(text.contains("\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"));
    assert!(text.contains("\nendpoint=[fe80::1%7]:9\n"));
}

#[test]
fn get_response_round_trips() {
    let info = sample_device();
    assert_eq!(parse_get_response(&format_get_response(&info)), Ok(info));
    let empty = DeviceInfo::default();
    assert_eq!(parse_get_response(&format_get_response(&empty)), Ok(empty));
}

/// Answer of wireguard-go 0.0.20220316 (Debian) to `get=1` after `wg setconf` gave it a key,
/// port 51820, fwmark 7 and two peers, byte for byte as captured from its socket (the second
/// peer had sent one handshake initiation, 148 bytes).
const WIREGUARD_GO_GET: &str = "private_key=a05c5e7df8f5556017be028d480e34458b2a3b041d5f6020b4a1d2381382b367\n\
    listen_port=51820\n\
    fwmark=7\n\
    public_key=852ced7eda9362a75e1bebe02539e637548c7e4c8e824debd0b5f5ee7cd7eb01\n\
    preshared_key=58bb8f60496fd7250a141e944f0c2126945e1e8da3ffbd58ea0291d699b10b1f\n\
    protocol_version=1\n\
    endpoint=1.2.3.4:51820\n\
    last_handshake_time_sec=0\n\
    last_handshake_time_nsec=0\n\
    tx_bytes=0\n\
    rx_bytes=0\n\
    persistent_keepalive_interval=25\n\
    allowed_ip=10.0.0.0/24\n\
    allowed_ip=fd00::1/128\n\
    public_key=48efa0823864eb86fba26951a6f9c73e64f3ffc819f784b9d2763023c4bf1145\n\
    preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
    protocol_version=1\n\
    endpoint=[::1]:4001\n\
    last_handshake_time_sec=0\n\
    last_handshake_time_nsec=0\n\
    tx_bytes=148\n\
    rx_bytes=0\n\
    persistent_keepalive_interval=0\n\
    allowed_ip=0.0.0.0/0\n\
    errno=0\n\
    \n";

#[test]
fn reads_wireguard_go_get_and_writes_it_back_identically() {
    let info = parse_get_response(WIREGUARD_GO_GET).unwrap();
    assert_eq!(info.private_key, Some(key(PRIV)));
    assert_eq!((info.listen_port, info.fwmark), (51820, 7));
    assert_eq!(info.peers.len(), 2);
    assert_eq!(info.peers[0].preshared_key, Some(key(PSK)));
    assert_eq!(
        info.peers[0].allowed_ips,
        [ip("10.0.0.0/24"), ip("fd00::1/128")]
    );
    assert_eq!(info.peers[1].preshared_key, None);
    assert_eq!(info.peers[1].last_handshake, None);
    assert_eq!(format_get_response(&info), WIREGUARD_GO_GET);
}

#[test]
fn get_response_parser_is_lenient_on_new_keys_strict_on_values() {
    let with_extra =
        format!("listen_port=1\nfuture_key=x\npublic_key={PUB1}\nnew_peer_key=y\nerrno=0\n\n");
    let info = parse_get_response(&with_extra).unwrap();
    assert_eq!((info.listen_port, info.peers.len()), (1, 1));

    let handshake = parse_get_response(&format!(
        "public_key={PUB1}\nlast_handshake_time_sec=5\nlast_handshake_time_nsec=6\nerrno=0\n\n"
    ))
    .unwrap();
    assert_eq!(
        handshake.peers[0].last_handshake,
        Some(UNIX_EPOCH + Duration::new(5, 6))
    );

    let daemon_failed = parse_get_response("errno=-5\n\n").unwrap_err();
    assert_eq!(
        (daemon_failed.errno(), daemon_failed.operation()),
        (5, Some(Operation::Get))
    );
    assert_eq!(parse_get_response("errno=71\n\n").unwrap_err().errno(), 71);

    for bad in [
        String::new(),
        "\n".to_owned(),
        "listen_port=1\n\n".to_owned(),
        "errno=0\n".to_owned(),
        "errno=x\n\n".to_owned(),
        "errno=--1\n\n".to_owned(),
        "errno=0\nlisten_port=1\n\n".to_owned(),
        "listen_port=65536\nerrno=0\n\n".to_owned(),
        "private_key=00\nerrno=0\n\n".to_owned(),
        "noequals\nerrno=0\n\n".to_owned(),
        format!("public_key={PUB1}\nlisten_port=1\nerrno=0\n\n"),
        format!("public_key={PUB1}\nlast_handshake_time_nsec=1000000000\nerrno=0\n\n"),
        format!("public_key={PUB1}\nlast_handshake_time_sec=18446744073709551615\nerrno=0\n\n"),
        format!("public_key={PUB1}\nendpoint=nowhere\nerrno=0\n\n"),
        format!("public_key={PUB1}\nallowed_ip=1.2.3.4/40\nerrno=0\n\n"),
        format!("public_key={PUB1}\nrx_bytes=-1\nerrno=0\n\n"),
    ] {
        assert!(parse_get_response(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn set_response_parser() {
    assert_eq!(parse_set_response(SUCCESS_RESPONSE), Ok(()));
    let err = parse_set_response("errno=-22\n\n").unwrap_err();
    assert_eq!((err.errno(), err.operation()), (22, Some(Operation::Set)));
    let wire = format_errno(&UapiError::address_in_use("x").with_operation(Operation::Set));
    assert_eq!(
        parse_set_response(&wire).unwrap_err().errno(),
        errno::EADDRINUSE
    );
    for bad in [
        "",
        "errno=0\n",
        "errno=\n\n",
        "x=0\n\n",
        "errno=0\nerrno=0\n\n",
    ] {
        assert_eq!(
            parse_set_response(bad).unwrap_err().errno(),
            errno::EPROTO,
            "{bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

fn drain(framer: &mut RequestFramer) -> Vec<Result<Request, UapiError>> {
    std::iter::from_fn(|| framer.next_request()).collect()
}

#[test]
fn framer_handles_every_split_point() {
    let stream = format!("{}{}{}", wg_sent::GET, wg_sent::SET_FULL, wg_sent::REMOVE);
    let expected: Vec<_> = [wg_sent::GET, wg_sent::SET_FULL, wg_sent::REMOVE]
        .iter()
        .map(|text| parse_request(text))
        .collect();
    for cut in 0..=stream.len() {
        let mut framer = RequestFramer::new();
        let mut got = Vec::new();
        for piece in [&stream.as_bytes()[..cut], &stream.as_bytes()[cut..]] {
            framer.push(piece).unwrap();
            got.extend(drain(&mut framer));
        }
        assert_eq!(got, expected, "cut at {cut}");
        assert_eq!(framer.partial_len(), 0);
    }
}

#[test]
fn framer_byte_by_byte_and_all_at_once_agree() {
    let stream: String = wg_sent::ALL.concat();
    let mut whole = RequestFramer::new();
    whole.push(stream.as_bytes()).unwrap();
    let all_at_once = drain(&mut whole);
    assert_eq!(all_at_once.len(), wg_sent::ALL.len());
    assert!(all_at_once.iter().all(Result::is_ok));

    let mut bytewise = RequestFramer::new();
    let mut one_by_one = Vec::new();
    for byte in stream.as_bytes() {
        bytewise.push(std::slice::from_ref(byte)).unwrap();
        one_by_one.extend(drain(&mut bytewise));
    }
    assert_eq!(one_by_one, all_at_once);
}

#[test]
fn framer_two_requests_in_one_read() {
    let mut framer = RequestFramer::new();
    framer
        .push(b"get=1\n\nset=1\nlisten_port=7\n\nget=1\n")
        .unwrap();
    assert_eq!(framer.next_request(), Some(Ok(Request::Get)));
    match framer.next_request() {
        Some(Ok(Request::Set(set))) => assert_eq!(set.listen_port, Some(7)),
        other => panic!("{other:?}"),
    }
    assert_eq!(framer.next_request(), None);
    assert_eq!(framer.partial_len(), "get=1\n".len());
    framer.push(b"\n").unwrap();
    assert_eq!(framer.next_request(), Some(Ok(Request::Get)));
    assert_eq!(framer.partial_len(), 0);
}

#[test]
fn framer_stays_in_sync_after_a_bad_request() {
    let mut framer = RequestFramer::new();
    framer
        .push(b"set=1\nbogus=1\nlisten_port=1\n\n\nnope\n\nset=1\nlisten_port=\xff\n\nget=1\n\n")
        .unwrap();
    let results = drain(&mut framer);
    let errnos: Vec<_> = results
        .iter()
        .map(|result| result.as_ref().map_err(UapiError::errno).err())
        .collect();
    assert_eq!(
        errnos,
        [
            Some(errno::EINVAL),
            Some(errno::EPROTO), // the lone "\n": an empty request
            Some(errno::EPROTO),
            Some(errno::EPROTO),
            None
        ]
    );
    assert_eq!(results.last(), Some(&Ok(Request::Get)));
}

#[test]
fn framer_limits_request_size() {
    let request = wg_sent::SET_FULL.as_bytes();
    // Exactly at the limit is fine, also when it arrives in pieces.
    let mut framer = RequestFramer::with_max_request_len(request.len());
    for piece in request.chunks(7) {
        framer.push(piece).unwrap();
    }
    framer.push(request).unwrap();
    assert_eq!(drain(&mut framer).len(), 2);

    // One byte over fails, whether or not the terminator has arrived.
    for complete in [true, false] {
        let mut framer = RequestFramer::with_max_request_len(request.len() - 1);
        let mut bytes = request.to_vec();
        if !complete {
            // Same length, but the last line is not blank yet.
            *bytes.last_mut().unwrap() = b'x';
        }
        let err = framer.push(&bytes).unwrap_err();
        assert_eq!(err.errno(), errno::EMSGSIZE);
        // The framer stays failed and holds nothing.
        assert_eq!(framer.push(b"get=1\n\n").unwrap_err(), err);
        assert_eq!(framer.next_request(), None);
        assert_eq!(framer.partial_len(), 0);
    }
}

#[test]
fn framer_rejects_endless_line_without_buffering_it() {
    let mut framer = RequestFramer::with_max_request_len(1000);
    let chunk = [b'a'; 300];
    let mut pushed = 0;
    let err = loop {
        match framer.push(&chunk) {
            Ok(()) => pushed += chunk.len(),
            Err(err) => break err,
        }
        assert!(pushed <= 1000);
    };
    assert_eq!(err.errno(), errno::EMSGSIZE);
    // The default limit is the documented one.
    let mut big = RequestFramer::new();
    assert!(big.push(&vec![b'x'; DEFAULT_MAX_REQUEST_LEN]).is_ok());
    assert!(big.push(b"x").is_err());
}

/// What `wg setconf` sends for a peer that routes 100,000 addresses (2.6 MB): wireguard-go
/// takes it, and so do we.
#[test]
fn framer_takes_a_configuration_of_100k_allowed_ips() {
    let lines: String = (0..100_000u32)
        .map(|n| {
            let [_, a, b, c] = n.to_be_bytes();
            format!("allowed_ip=10.{a}.{b}.{c}/32\n")
        })
        .collect();
    let text = peer_with(&lines);
    assert!(text.len() > 2_000_000);
    let mut framer = RequestFramer::new();
    for chunk in text.as_bytes().chunks(64 << 10) {
        framer.push(chunk).unwrap();
    }
    match framer.next_request() {
        Some(Ok(Request::Set(set))) => assert_eq!(set.peers[0].allowed_ips.len(), 100_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn framer_debug_hides_buffered_bytes() {
    let mut framer = RequestFramer::new();
    framer
        .push(format!("set=1\nprivate_key={PRIV}\n").as_bytes())
        .unwrap();
    let text = format!("{framer:?}");
    assert!(
        !text.contains(PRIV) && text.contains("partial_len"),
        "{text}"
    );
}

#[test]
fn framer_empty_pushes_and_default() {
    let mut framer = RequestFramer::default();
    framer.push(b"").unwrap();
    assert_eq!(framer.next_request(), None);
    framer.push(b"get=1\n").unwrap();
    framer.push(b"").unwrap();
    assert_eq!(framer.next_request(), None);
    framer.push(b"\n").unwrap();
    assert_eq!(framer.next_request(), Some(Ok(Request::Get)));
}

// ---------------------------------------------------------------------------------------------
// Round trips and a small deterministic fuzz

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }

    fn key(&mut self) -> Key {
        let mut key = [0; 32];
        for byte in &mut key {
            *byte = self.next() as u8;
        }
        key
    }
}

fn random_allowed_ip(rng: &mut Rng) -> AllowedIp {
    if rng.chance(2) {
        let cidr = rng.below(33) as u8;
        AllowedIp::new(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)), cidr).unwrap()
    } else {
        let cidr = rng.below(129) as u8;
        let addr = u128::from(rng.next()) << 64 | u128::from(rng.next());
        AllowedIp::new(IpAddr::V6(Ipv6Addr::from(addr)), cidr).unwrap()
    }
}

fn random_endpoint(rng: &mut Rng) -> SocketAddr {
    let port = rng.next() as u16;
    if rng.chance(2) {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)), port)
    } else {
        let addr = Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next()));
        let scope = if rng.chance(3) { rng.next() as u32 } else { 0 };
        SocketAddr::V6(SocketAddrV6::new(addr, port, 0, scope))
    }
}

fn random_set(rng: &mut Rng) -> SetRequest {
    let peers = (0..rng.below(4))
        .map(|_| PeerChange {
            public_key: rng.key(),
            remove: rng.chance(4),
            update_only: rng.chance(4),
            preshared_key: rng.chance(2).then(|| rng.key()),
            endpoint: rng.chance(2).then(|| random_endpoint(rng)),
            persistent_keepalive_interval: rng.chance(2).then(|| rng.next() as u16),
            replace_allowed_ips: rng.chance(2),
            allowed_ips: (0..rng.below(4)).map(|_| random_allowed_ip(rng)).collect(),
        })
        .collect();
    SetRequest {
        private_key: rng
            .chance(2)
            .then(|| if rng.chance(3) { [0; 32] } else { rng.key() }),
        listen_port: rng.chance(2).then(|| rng.next() as u16),
        fwmark: rng.chance(2).then(|| rng.next() as u32),
        replace_peers: rng.chance(3),
        peers,
    }
}

fn random_device(rng: &mut Rng) -> DeviceInfo {
    let peers = (0..rng.below(4))
        .map(|_| PeerInfo {
            public_key: rng.key(),
            preshared_key: rng.chance(2).then(|| rng.key()),
            endpoint: rng.chance(2).then(|| random_endpoint(rng)),
            last_handshake: rng.chance(2).then(|| {
                UNIX_EPOCH + Duration::new(rng.next() >> 32, (rng.next() % 1_000_000_000) as u32)
            }),
            rx_bytes: rng.next(),
            tx_bytes: rng.next(),
            persistent_keepalive_interval: rng.next() as u16,
            allowed_ips: (0..rng.below(4)).map(|_| random_allowed_ip(rng)).collect(),
        })
        .collect();
    DeviceInfo {
        private_key: rng.chance(2).then(|| rng.key()),
        listen_port: rng.next() as u16,
        fwmark: rng.next() as u32,
        peers,
    }
}

#[test]
fn random_requests_round_trip() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..2000 {
        let request = Request::Set(random_set(&mut rng));
        let text = format_request(&request);
        assert_eq!(parse_request(&text), Ok(request), "{text}");
    }
}

#[test]
fn random_devices_round_trip() {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    for _ in 0..2000 {
        let info = random_device(&mut rng);
        let text = format_get_response(&info);
        assert_eq!(parse_get_response(&text), Ok(info), "{text}");
    }
}

/// Mutated wg requests through every entry point: nothing may panic, whatever parses must
/// format and parse back to itself, and framing must not depend on how reads are cut.
#[test]
fn mutated_input_never_panics() {
    const ALPHABET: &[u8] = b"\n\n\n==/:[]%-+0123456789abcdefABCDEF.xyz_ \xff\r";
    let mut rng = Rng(0x5eed_1234_abcd_0003);
    let seeds: Vec<&[u8]> = wg_sent::ALL
        .iter()
        .map(|text| text.as_bytes())
        .chain([WIREGUARD_GO_GET.as_bytes()])
        .collect();
    for _ in 0..20_000 {
        let mut bytes = seeds[rng.below(seeds.len())].to_vec();
        if rng.chance(3) {
            bytes.extend_from_slice(seeds[rng.below(seeds.len())]);
        }
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(4) {
                0 if at < bytes.len() => bytes[at] = ALPHABET[rng.below(ALPHABET.len())],
                1 => bytes.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at),
            }
        }
        check_input(&bytes, rng.below(40) + 1);
    }
}

fn check_input(bytes: &[u8], chunk: usize) {
    if let Ok(request) = parse_request_bytes(bytes, None) {
        assert_eq!(parse_request(&format_request(&request)), Ok(request));
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(info) = parse_get_response(text) {
            assert_eq!(parse_get_response(&format_get_response(&info)), Ok(info));
        }
        let _ = parse_set_response(text);
    }
    let mut whole = RequestFramer::with_max_request_len(512);
    let whole_result = whole.push(bytes).map(|()| drain(&mut whole));
    let mut pieces = RequestFramer::with_max_request_len(512);
    let mut got = Vec::new();
    let mut failed = None;
    for piece in bytes.chunks(chunk) {
        if let Err(err) = pieces.push(piece) {
            failed = Some(err);
            break;
        }
        got.extend(drain(&mut pieces));
    }
    match (whole_result, failed) {
        (Ok(expected), None) => assert_eq!(got, expected),
        (Err(a), Some(b)) => assert_eq!(a, b),
        (a, b) => panic!("framing depends on read size: {a:?} vs {b:?}"),
    }
    for result in got {
        match result {
            Ok(request) => assert!(format_request(&request).ends_with("\n\n")),
            Err(err) => assert!(format_errno(&err).starts_with("errno=")),
        }
    }
}

#[test]
fn system_time_far_future_formats() {
    // The largest time the platform holds must format without overflow.
    let mut peer = PeerInfo::new([1; 32]);
    peer.last_handshake = Some(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2));
    let info = DeviceInfo {
        peers: vec![peer],
        ..DeviceInfo::default()
    };
    let text = format_get_response(&info);
    assert_eq!(parse_get_response(&text), Ok(info));
    let _ = SystemTime::now();
}
