//! Proof that a peer holds the private key behind its WireGuard public key, and bearer tokens
//! that remember the proof.
//!
//! X25519 keys cannot sign, so possession is proven by Diffie-Hellman: the client MACs a
//! server-issued challenge with DH(client_secret, server_public), which only the server can
//! recompute, as DH(server_secret, client_public). Challenges and tokens carry a MAC under a
//! server key instead of being stored, so a flood of requests costs the server no memory and
//! tokens survive restarts. The price: a challenge and its proof can be replayed until the
//! challenge expires, so they travel over TLS only. Rate limiting is the HTTP layer's job.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use blake2::Blake2sMac256;
use blake2::digest::{KeyInit, Mac};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};

use crate::peer_id::PeerId;

/// Long enough for one HTTP round trip, short enough to bound replay of an observed proof.
pub const CHALLENGE_LIFETIME_SECS: u64 = 60;
/// Tokens cannot be revoked one by one (rotating the token key revokes all), so keep them short.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 24 * 60 * 60;

const VERSION: u8 = 1;

// Distinct labels keep the three MACs apart: a challenge MAC never verifies as a token MAC,
// even though both use the token key. No label is a prefix of another and every field after
// it has a fixed length, so each MAC input parses one way only.
const PROOF_LABEL: &[u8] = b"lanrage auth v1 proof";
const CHALLENGE_LABEL: &[u8] = b"lanrage auth v1 challenge";
const TOKEN_LABEL: &[u8] = b"lanrage auth v1 token";

/// Challenge and token MACs are cut to 128 bits: a forger must guess online, through the
/// rate-limited HTTP layer, so 2^128 tries is plenty and the text forms stay short.
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// version, expiry, nonce, peer, MAC.
const CHALLENGE_LEN: usize = 1 + 8 + NONCE_LEN + KEY_LEN + TAG_LEN;
/// version, peer, expiry, MAC.
const TOKEN_LEN: usize = 1 + KEY_LEN + 8 + TAG_LEN;

/// Why authentication failed. The HTTP layer maps all of them to one refusal; the detail is
/// for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// The text form could not be parsed; says what was wrong.
    Malformed(&'static str),
    /// The challenge or token is past its expiry.
    Expired,
    /// The challenge was issued to a different peer.
    WrongPeer,
    /// The challenge was not issued by this server, or the proof is wrong.
    BadProof,
    /// The token was not issued by this server (or was altered).
    BadToken,
    /// A key that cannot prove possession: low-order (the shared secret would be all zeros,
    /// known to everyone) or a non-canonical encoding (an alias of some other key).
    WeakKey,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed(what) => write!(f, "malformed: {what}"),
            AuthError::Expired => f.write_str("challenge or token has expired"),
            AuthError::WrongPeer => f.write_str("challenge was issued to a different peer"),
            AuthError::BadProof => f.write_str("challenge or proof of key possession is invalid"),
            AuthError::BadToken => f.write_str("token is invalid"),
            AuthError::WeakKey => {
                f.write_str("key is low-order or non-canonical and cannot prove possession")
            }
        }
    }
}

impl std::error::Error for AuthError {}

/// The server's side: its static X25519 key (the client DHs against it) and the key that
/// authenticates challenges and tokens.
pub struct ServerAuth {
    secret: StaticSecret,
    public: PublicKey,
    token_key: [u8; 32],
}

/// Shows the public key only; both keys are secret.
impl fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerAuth({})", STANDARD.encode(self.public.as_bytes()))
    }
}

impl ServerAuth {
    /// `static_secret`: the server's X25519 private key bytes; `token_key`: a separate random
    /// key for challenges and tokens. Both are persisted by the caller so tokens survive
    /// restarts; a new `token_key` revokes every outstanding token and challenge.
    pub fn new(static_secret: [u8; 32], token_key: [u8; 32]) -> Self {
        let secret = StaticSecret::from(static_secret);
        let public = PublicKey::from(&secret);
        ServerAuth {
            secret,
            public,
            token_key,
        }
    }

    /// What clients pass to [`prove`]; publish it alongside the server's address.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// A challenge for `peer`, valid for [`CHALLENGE_LIFETIME_SECS`]. Stateless: the MAC, not
    /// a table, is how [`verify`](Self::verify) knows this server issued it, so a flood of
    /// challenge requests costs no memory. `nonce` (random, from the caller) makes every
    /// challenge, and so every proof, distinct.
    pub fn challenge(&self, now_unix: u64, nonce: [u8; 16], peer: &PeerId) -> Challenge {
        let mut challenge = Challenge {
            expires_at: now_unix.saturating_add(CHALLENGE_LIFETIME_SECS),
            nonce,
            peer: *peer,
            tag: [0; TAG_LEN],
        };
        challenge.tag = self.challenge_tag(&challenge);
        challenge
    }

    /// Whether `proof` shows that `peer` holds its private key. Checks that this server issued
    /// `challenge` to `peer` and that it has not expired, refuses keys that cannot prove
    /// anything, then compares the proof in constant time.
    pub fn verify(
        &self,
        now_unix: u64,
        peer: &PeerId,
        challenge: &Challenge,
        proof: &Proof,
    ) -> Result<(), AuthError> {
        if !bool::from(self.challenge_tag(challenge).ct_eq(&challenge.tag)) {
            return Err(AuthError::BadProof);
        }
        if now_unix > challenge.expires_at {
            return Err(AuthError::Expired);
        }
        if challenge.peer != *peer {
            return Err(AuthError::WrongPeer);
        }
        let shared = checked_dh(&self.secret, &peer.0)?;
        let expected = proof_mac(&shared, challenge, &peer.0, self.public.as_bytes());
        if bool::from(expected.ct_eq(&proof.0)) {
            Ok(())
        } else {
            Err(AuthError::BadProof)
        }
    }

    /// A bearer token for `peer`, to issue after [`verify`](Self::verify) succeeds. Stateless,
    /// so it cannot be revoked alone: it lasts `lifetime_secs` or until the token key changes.
    pub fn issue_token(&self, now_unix: u64, peer: &PeerId, lifetime_secs: u64) -> Token {
        let mut token = Token {
            peer: *peer,
            expires_at: now_unix.saturating_add(lifetime_secs),
            tag: [0; TAG_LEN],
        };
        token.tag = self.token_tag(&token);
        token
    }

    /// The peer `token` speaks for, if this server issued it and it has not expired.
    pub fn check_token(&self, now_unix: u64, token: &Token) -> Result<PeerId, AuthError> {
        if !bool::from(self.token_tag(token).ct_eq(&token.tag)) {
            return Err(AuthError::BadToken);
        }
        if now_unix > token.expires_at {
            return Err(AuthError::Expired);
        }
        Ok(token.peer)
    }

    fn challenge_tag(&self, challenge: &Challenge) -> [u8; TAG_LEN] {
        truncate(blake2s_mac(
            &self.token_key,
            &[CHALLENGE_LABEL, &challenge.body()],
        ))
    }

    fn token_tag(&self, token: &Token) -> [u8; TAG_LEN] {
        truncate(blake2s_mac(&self.token_key, &[TOKEN_LABEL, &token.body()]))
    }
}

/// Client side: the proof for `challenge`, from the client's private key and the server's
/// public key. Refuses a low-order server key (the proof would be forgeable by anyone) and a
/// challenge issued to a different key (the server would refuse it anyway).
pub fn prove(
    client_secret: &[u8; 32],
    server_public: &[u8; 32],
    challenge: &Challenge,
) -> Result<Proof, AuthError> {
    let secret = StaticSecret::from(*client_secret);
    let client_public = PublicKey::from(&secret);
    if challenge.peer.0 != *client_public.as_bytes() {
        return Err(AuthError::WrongPeer);
    }
    let shared = checked_dh(&secret, server_public)?;
    Ok(Proof(proof_mac(
        &shared,
        challenge,
        client_public.as_bytes(),
        server_public,
    )))
}

/// DH with `their_public`, refusing keys whose shared secret proves nothing: low-order points
/// give all zeros, which anyone can compute. Non-canonical encodings (u >= 2^255 - 19, or bit
/// 255 set) are refused too: X25519 reduces them to another key's point, so the holder of
/// that key could claim the alias as a second identity. (Adding a small-order point also
/// gives an alias that the clamped scalar cannot tell apart; only the real key's holder can
/// use it, and a fresh key costs nothing anyway, so no impersonation follows.)
fn checked_dh(secret: &StaticSecret, their_public: &[u8; 32]) -> Result<SharedSecret, AuthError> {
    if !is_canonical(their_public) {
        return Err(AuthError::WeakKey);
    }
    let shared = secret.diffie_hellman(&PublicKey::from(*their_public));
    if !shared.was_contributory() {
        return Err(AuthError::WeakKey);
    }
    Ok(shared)
}

/// Whether `u`, little-endian, is below the field prime 2^255 - 19. Public data, so the
/// early exit leaks nothing.
fn is_canonical(u: &[u8; 32]) -> bool {
    const P: [u8; 32] = {
        let mut p = [0xff; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        p
    };
    for (byte, prime) in u.iter().rev().zip(P.iter().rev()) {
        if byte != prime {
            return byte < prime;
        }
    }
    false
}

/// Binds the proof to this challenge (hence this peer and moment), the client key and the
/// server key, so it cannot be replayed to another server or for another key.
fn proof_mac(
    shared: &SharedSecret,
    challenge: &Challenge,
    client_public: &[u8; 32],
    server_public: &[u8; 32],
) -> [u8; 32] {
    blake2s_mac(
        shared.as_bytes(),
        &[
            PROOF_LABEL,
            &challenge.to_bytes(),
            client_public,
            server_public,
        ],
    )
}

/// Keyed BLAKE2s-256, the MAC WireGuard itself uses.
fn blake2s_mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Blake2sMac256 as KeyInit>::new(&(*key).into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn truncate(mac: [u8; 32]) -> [u8; TAG_LEN] {
    let mut tag = [0; TAG_LEN];
    tag.copy_from_slice(&mac[..TAG_LEN]);
    tag
}

/// A server-issued challenge. It names the peer it was issued to, so the server can tell a
/// challenge for someone else from a forged one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    expires_at: u64,
    nonce: [u8; NONCE_LEN],
    peer: PeerId,
    tag: [u8; TAG_LEN],
}

impl Challenge {
    /// When the challenge expires (Unix seconds). Unverified on the client's side.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Everything the MAC covers.
    fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(CHALLENGE_LEN);
        body.push(VERSION);
        body.extend_from_slice(&self.expires_at.to_be_bytes());
        body.extend_from_slice(&self.nonce);
        body.extend_from_slice(&self.peer.0);
        body
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.body();
        bytes.extend_from_slice(&self.tag);
        bytes
    }
}

/// Base64 of version (1), expiry (u64 BE), nonce (16), peer key (32), MAC (16).
impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.to_bytes()))
    }
}

impl FromStr for Challenge {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const LENGTH: AuthError = AuthError::Malformed("challenge has the wrong length");
        let bytes = decode(s, CHALLENGE_LEN, "challenge is not base64", LENGTH)?;
        let (version, rest) = bytes.split_first().ok_or(LENGTH)?;
        check_version(*version)?;
        let (expires_at, rest) = rest.split_first_chunk::<8>().ok_or(LENGTH)?;
        let (nonce, rest) = rest.split_first_chunk::<NONCE_LEN>().ok_or(LENGTH)?;
        let (peer, rest) = rest.split_first_chunk::<KEY_LEN>().ok_or(LENGTH)?;
        let tag = <[u8; TAG_LEN]>::try_from(rest).map_err(|_| LENGTH)?;
        Ok(Challenge {
            expires_at: u64::from_be_bytes(*expires_at),
            nonce: *nonce,
            peer: PeerId(*peer),
            tag,
        })
    }
}

/// The client's answer to a challenge: BLAKE2s-MAC-256 keyed with the DH shared secret.
#[derive(Debug, Clone)]
pub struct Proof([u8; 32]);

/// Base64 of the 32 MAC bytes.
impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl FromStr for Proof {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const LENGTH: AuthError = AuthError::Malformed("proof has the wrong length");
        let bytes = decode(s, 32, "proof is not base64", LENGTH)?;
        let proof = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| LENGTH)?;
        Ok(Proof(proof))
    }
}

/// A bearer token: whoever holds it acts as its peer until it expires. No `PartialEq`, so
/// nobody compares tokens in variable time; [`ServerAuth::check_token`] is the way.
#[derive(Clone)]
pub struct Token {
    peer: PeerId,
    expires_at: u64,
    tag: [u8; TAG_LEN],
}

impl Token {
    /// When the token expires (Unix seconds), so a client can renew it early. Unverified on
    /// the client's side.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Everything the MAC covers.
    fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(TOKEN_LEN);
        body.push(VERSION);
        body.extend_from_slice(&self.peer.0);
        body.extend_from_slice(&self.expires_at.to_be_bytes());
        body
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.body();
        bytes.extend_from_slice(&self.tag);
        bytes
    }
}

/// A secret: keeps it out of logs.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Base64 of version (1), peer key (32), expiry (u64 BE), MAC (16). This is the secret itself.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.to_bytes()))
    }
}

impl FromStr for Token {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const LENGTH: AuthError = AuthError::Malformed("token has the wrong length");
        let bytes = decode(s, TOKEN_LEN, "token is not base64", LENGTH)?;
        let (version, rest) = bytes.split_first().ok_or(LENGTH)?;
        check_version(*version)?;
        let (peer, rest) = rest.split_first_chunk::<KEY_LEN>().ok_or(LENGTH)?;
        let (expires_at, rest) = rest.split_first_chunk::<8>().ok_or(LENGTH)?;
        let tag = <[u8; TAG_LEN]>::try_from(rest).map_err(|_| LENGTH)?;
        Ok(Token {
            peer: PeerId(*peer),
            expires_at: u64::from_be_bytes(*expires_at),
            tag,
        })
    }
}

/// Base64 text that must decode to exactly `len` bytes. The text length is checked before
/// decoding, so oversized input is refused without allocating for it.
fn decode(
    s: &str,
    len: usize,
    not_base64: &'static str,
    wrong_length: AuthError,
) -> Result<Vec<u8>, AuthError> {
    if s.len() != len.div_ceil(3) * 4 {
        return Err(wrong_length);
    }
    let bytes = STANDARD
        .decode(s)
        .map_err(|_| AuthError::Malformed(not_base64))?;
    if bytes.len() != len {
        return Err(wrong_length);
    }
    Ok(bytes)
}

fn check_version(version: u8) -> Result<(), AuthError> {
    if version == VERSION {
        Ok(())
    } else {
        Err(AuthError::Malformed("unsupported version"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const NONCE: [u8; 16] = [0x42; 16];
    const SERVER_SECRET: [u8; 32] = [0x11; 32];
    const TOKEN_KEY: [u8; 32] = [0x22; 32];
    const CLIENT_SECRET: [u8; 32] = [0x33; 32];
    const OTHER_CLIENT_SECRET: [u8; 32] = [0x44; 32];
    /// A point of order 8: DH with it gives all zeros for any clamped scalar.
    const ORDER_8: [u8; 32] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];

    fn server() -> ServerAuth {
        ServerAuth::new(SERVER_SECRET, TOKEN_KEY)
    }

    fn peer_of(secret: &[u8; 32]) -> PeerId {
        PeerId(PublicKey::from(&StaticSecret::from(*secret)).to_bytes())
    }

    /// What an attacker sends: a MAC keyed with whatever shared secret it can compute.
    fn forge(
        shared: &[u8; 32],
        challenge: &Challenge,
        claimed: &PeerId,
        server: &[u8; 32],
    ) -> Proof {
        Proof(blake2s_mac(
            shared,
            &[PROOF_LABEL, &challenge.to_bytes(), &claimed.0, server],
        ))
    }

    #[test]
    fn round_trip_issues_a_token_for_the_prover() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        // Over the wire, as text.
        let challenge: Challenge = server
            .challenge(NOW, NONCE, &peer)
            .to_string()
            .parse()
            .unwrap();
        let proof = prove(&CLIENT_SECRET, &server.public_key(), &challenge).unwrap();
        let proof: Proof = proof.to_string().parse().unwrap();
        assert_eq!(server.verify(NOW + 5, &peer, &challenge, &proof), Ok(()));

        let token = server.issue_token(NOW + 5, &peer, DEFAULT_TOKEN_LIFETIME_SECS);
        let token: Token = token.to_string().parse().unwrap();
        assert_eq!(server.check_token(NOW + 10, &token), Ok(peer));
    }

    #[test]
    fn proof_against_another_peers_challenge_is_wrong_peer() {
        let server = server();
        let victim = peer_of(&CLIENT_SECRET);
        let attacker = peer_of(&OTHER_CLIENT_SECRET);
        let challenge = server.challenge(NOW, NONCE, &victim);
        // The client refuses to answer a challenge for someone else...
        assert_eq!(
            prove(&OTHER_CLIENT_SECRET, &server.public_key(), &challenge).unwrap_err(),
            AuthError::WrongPeer
        );
        // ...and the server refuses a proof presented for someone else's challenge.
        let theirs = prove(&CLIENT_SECRET, &server.public_key(), &challenge).unwrap();
        assert_eq!(
            server.verify(NOW, &attacker, &challenge, &theirs),
            Err(AuthError::WrongPeer)
        );
    }

    #[test]
    fn tampered_challenge_is_refused_at_every_byte() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let bytes = server.challenge(NOW, NONCE, &peer).to_bytes();
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            let result = STANDARD
                .encode(&tampered)
                .parse::<Challenge>()
                .and_then(|c| {
                    // The best an attacker can do: a genuine proof over the tampered challenge.
                    let proof =
                        prove(&CLIENT_SECRET, &server.public_key(), &c).unwrap_or(Proof([0; 32]));
                    server.verify(NOW, &peer, &c, &proof)
                });
            let expected = if i == 0 {
                AuthError::Malformed("unsupported version")
            } else {
                AuthError::BadProof
            };
            assert_eq!(result, Err(expected), "byte {i}");
        }
    }

    #[test]
    fn expired_challenge_is_refused() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let challenge = server.challenge(NOW, NONCE, &peer);
        let proof = prove(&CLIENT_SECRET, &server.public_key(), &challenge).unwrap();
        let expiry = NOW + CHALLENGE_LIFETIME_SECS;
        assert_eq!(challenge.expires_at(), expiry);
        assert_eq!(server.verify(expiry, &peer, &challenge, &proof), Ok(()));
        assert_eq!(
            server.verify(expiry + 1, &peer, &challenge, &proof),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn proof_made_with_the_wrong_secret_is_bad_proof() {
        let server = server();
        let victim = peer_of(&CLIENT_SECRET);
        let challenge = server.challenge(NOW, NONCE, &victim);
        // The attacker claims the victim's key but can only DH with its own secret.
        let shared = StaticSecret::from(OTHER_CLIENT_SECRET)
            .diffie_hellman(&PublicKey::from(server.public_key()));
        let forged = forge(shared.as_bytes(), &challenge, &victim, &server.public_key());
        assert_eq!(
            server.verify(NOW, &victim, &challenge, &forged),
            Err(AuthError::BadProof)
        );
        // Garbage is no better.
        assert_eq!(
            server.verify(NOW, &victim, &challenge, &Proof([0; 32])),
            Err(AuthError::BadProof)
        );
    }

    #[test]
    fn proof_for_another_server_is_bad_proof() {
        let server = server();
        let other = ServerAuth::new([0x55; 32], TOKEN_KEY);
        let peer = peer_of(&CLIENT_SECRET);
        let challenge = server.challenge(NOW, NONCE, &peer);
        let proof = prove(&CLIENT_SECRET, &other.public_key(), &challenge).unwrap();
        assert_eq!(
            server.verify(NOW, &peer, &challenge, &proof),
            Err(AuthError::BadProof)
        );
        // Same token key, so `other` accepts the challenge itself, but the proof names `server`.
        let proof = prove(&CLIENT_SECRET, &server.public_key(), &challenge).unwrap();
        assert_eq!(
            other.verify(NOW, &peer, &challenge, &proof),
            Err(AuthError::BadProof)
        );
    }

    #[test]
    fn low_order_client_keys_are_weak() {
        let server = server();
        for key in [[0u8; 32], ORDER_8] {
            let peer = PeerId(key);
            let challenge = server.challenge(NOW, NONCE, &peer);
            // Anyone can compute the all-zero shared secret such a "key" would give.
            let forged = forge(&[0; 32], &challenge, &peer, &server.public_key());
            assert_eq!(
                server.verify(NOW, &peer, &challenge, &forged),
                Err(AuthError::WeakKey)
            );
        }
    }

    #[test]
    fn non_canonical_client_keys_are_weak() {
        let server = server();
        let real = peer_of(&CLIENT_SECRET);
        // Bit 255 set: X25519 ignores it, so this aliases `real` and its holder could prove it.
        let mut alias = real.0;
        alias[31] |= 0x80;
        let dh = |key: [u8; 32]| {
            StaticSecret::from(SERVER_SECRET)
                .diffie_hellman(&PublicKey::from(key))
                .to_bytes()
        };
        assert_eq!(
            dh(alias),
            dh(real.0),
            "without the check, the alias would verify"
        );
        // p + 9 reduces to the base point's u = 9.
        let mut above_p = [0xff; 32];
        above_p[0] = 0xed + 9;
        above_p[31] = 0x7f;
        for key in [alias, above_p, [0xff; 32]] {
            let peer = PeerId(key);
            let challenge = server.challenge(NOW, NONCE, &peer);
            let shared = StaticSecret::from(CLIENT_SECRET)
                .diffie_hellman(&PublicKey::from(server.public_key()));
            let proof = forge(shared.as_bytes(), &challenge, &peer, &server.public_key());
            assert_eq!(
                server.verify(NOW, &peer, &challenge, &proof),
                Err(AuthError::WeakKey)
            );
        }
        assert!(is_canonical(&real.0));
        let mut below_p = [0xff; 32];
        below_p[0] = 0xec;
        below_p[31] = 0x7f;
        assert!(is_canonical(&below_p));
    }

    #[test]
    fn prove_refuses_a_low_order_server_key() {
        let server = server();
        let challenge = server.challenge(NOW, NONCE, &peer_of(&CLIENT_SECRET));
        for key in [[0u8; 32], ORDER_8] {
            assert_eq!(
                prove(&CLIENT_SECRET, &key, &challenge).unwrap_err(),
                AuthError::WeakKey
            );
        }
    }

    #[test]
    fn token_round_trips() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let token = server.issue_token(NOW, &peer, 3600);
        assert_eq!(token.expires_at(), NOW + 3600);
        let parsed: Token = token.to_string().parse().unwrap();
        assert_eq!(parsed.to_string(), token.to_string());
        assert_eq!(server.check_token(NOW + 3600, &parsed), Ok(peer));
    }

    #[test]
    fn expired_token_is_refused() {
        let server = server();
        let token = server.issue_token(NOW, &peer_of(&CLIENT_SECRET), 3600);
        assert_eq!(
            server.check_token(NOW + 3601, &token),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn tampered_token_is_refused_at_every_byte() {
        let server = server();
        let bytes = server
            .issue_token(NOW, &peer_of(&CLIENT_SECRET), 3600)
            .to_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80] {
                let mut tampered = bytes.clone();
                tampered[i] ^= flip;
                let result = STANDARD
                    .encode(&tampered)
                    .parse::<Token>()
                    .and_then(|t| server.check_token(NOW, &t));
                assert!(result.is_err(), "byte {i} flip {flip:#x}");
            }
        }
    }

    #[test]
    fn token_from_another_token_key_is_bad_token() {
        let other = ServerAuth::new(SERVER_SECRET, [0x66; 32]);
        let token = other.issue_token(NOW, &peer_of(&CLIENT_SECRET), 3600);
        assert_eq!(server().check_token(NOW, &token), Err(AuthError::BadToken));
    }

    #[test]
    fn challenge_mac_does_not_verify_as_token_mac() {
        // Same key, different labels: a challenge tag moved into a token must fail.
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let challenge = server.challenge(NOW, NONCE, &peer);
        let token = Token {
            peer,
            expires_at: NOW,
            tag: challenge.tag,
        };
        assert_eq!(server.check_token(NOW, &token), Err(AuthError::BadToken));
    }

    #[test]
    fn text_forms_round_trip() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let challenge = server.challenge(NOW, NONCE, &peer);
        assert_eq!(
            challenge.to_string().parse::<Challenge>(),
            Ok(challenge.clone())
        );
        let proof = prove(&CLIENT_SECRET, &server.public_key(), &challenge).unwrap();
        assert_eq!(
            proof.to_string().parse::<Proof>().unwrap().to_string(),
            proof.to_string()
        );
        let token = server.issue_token(NOW, &peer, 60);
        assert_eq!(
            token.to_string().parse::<Token>().unwrap().to_string(),
            token.to_string()
        );
    }

    /// Pins the layout the module doc promises, so a change to it cannot pass unnoticed.
    #[test]
    fn wire_layout_is_as_documented() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let challenge = STANDARD
            .decode(server.challenge(NOW, NONCE, &peer).to_string())
            .unwrap();
        assert_eq!(challenge.len(), CHALLENGE_LEN);
        assert_eq!(challenge[0], 1);
        assert_eq!(
            challenge[1..9],
            (NOW + CHALLENGE_LIFETIME_SECS).to_be_bytes()
        );
        assert_eq!(challenge[9..25], NONCE);
        assert_eq!(challenge[25..57], peer.0);

        let token = STANDARD
            .decode(server.issue_token(NOW, &peer, 60).to_string())
            .unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        assert_eq!(token[0], 1);
        assert_eq!(token[1..33], peer.0);
        assert_eq!(token[33..41], (NOW + 60).to_be_bytes());
    }

    /// Known answers for a client written in another language. Computed independently with
    /// Python's `cryptography` (X25519) and `hashlib.blake2s` (keyed, digest truncated to 16
    /// bytes for the challenge and token MACs); they matched this module byte for byte.
    #[test]
    fn known_answers() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let challenge = server.challenge(NOW, NONCE, &peer);
        assert_eq!(
            challenge.to_string(),
            "AQAAAABlU/E8QkJCQkJCQkJCQkJCQkJCQnsNR9k0J/gxEWB4HHxzP9ifiJcK70kNiqDuGaTLihsUGXL/gKLrr5QYkE/fGmo68g=="
        );
        assert_eq!(
            prove(&CLIENT_SECRET, &server.public_key(), &challenge)
                .unwrap()
                .to_string(),
            "4KuX/dtup9JZ8UBHuFmFV6r4lhzzJdoU7kXvVEtpft4="
        );
        assert_eq!(
            server.issue_token(NOW, &peer, 60).to_string(),
            "AXsNR9k0J/gxEWB4HHxzP9ifiJcK70kNiqDuGaTLihsUAAAAAGVT8TxIcqqhOjHj+n+SD1htB5sl"
        );
    }

    #[test]
    fn garbage_text_is_malformed() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let challenge = server.challenge(NOW, NONCE, &peer).to_string();
        let proof = prove(
            &CLIENT_SECRET,
            &server.public_key(),
            &server.challenge(NOW, NONCE, &peer),
        )
        .unwrap()
        .to_string();
        let token = server.issue_token(NOW, &peer, 60).to_string();

        fn bad(good: &str) -> Vec<String> {
            let mut not_base64 = good.to_string();
            not_base64.replace_range(0..1, "!");
            vec![
                String::new(),
                "not base64 at all".into(),
                not_base64,
                good[..good.len() - 4].to_string(),
                format!("{good}AAAA"),
                format!(" {good}"),
                STANDARD.encode([1u8]),
                "A".repeat(10_000),
            ]
        }
        let is_malformed = |r: Result<(), AuthError>| matches!(r, Err(AuthError::Malformed(_)));
        for s in bad(&challenge) {
            assert!(is_malformed(s.parse::<Challenge>().map(drop)), "{s:?}");
        }
        for s in bad(&proof) {
            assert!(is_malformed(s.parse::<Proof>().map(drop)), "{s:?}");
        }
        for s in bad(&token) {
            assert!(is_malformed(s.parse::<Token>().map(drop)), "{s:?}");
        }
        // Each kind's text is the wrong length for the others.
        assert!(is_malformed(token.parse::<Challenge>().map(drop)));
        assert!(is_malformed(challenge.parse::<Token>().map(drop)));
        assert!(is_malformed(token.parse::<Proof>().map(drop)));
    }

    #[test]
    fn unsupported_version_is_malformed() {
        let server = server();
        let peer = peer_of(&CLIENT_SECRET);
        let mut challenge = server.challenge(NOW, NONCE, &peer).to_bytes();
        challenge[0] = 2;
        assert_eq!(
            STANDARD.encode(&challenge).parse::<Challenge>(),
            Err(AuthError::Malformed("unsupported version"))
        );
        let mut token = server.issue_token(NOW, &peer, 60).to_bytes();
        token[0] = 0;
        assert_eq!(
            STANDARD.encode(&token).parse::<Token>().map(drop),
            Err(AuthError::Malformed("unsupported version"))
        );
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let token = server().issue_token(NOW, &peer_of(&CLIENT_SECRET), 60);
        let debug = format!("{token:?}");
        assert_eq!(debug, "Token(..)");
        assert!(!debug.contains(&token.to_string()));
        let server_debug = format!("{:?}", server());
        assert!(!server_debug.contains(&STANDARD.encode(TOKEN_KEY)));
        assert!(!server_debug.contains(&STANDARD.encode(SERVER_SECRET)));
    }

    #[test]
    fn errors_display_clearly() {
        assert_eq!(
            AuthError::Malformed("unsupported version").to_string(),
            "malformed: unsupported version"
        );
        let err: Box<dyn std::error::Error> = Box::new(AuthError::WeakKey);
        assert!(err.to_string().contains("low-order"));
    }
}
