//! STUN Binding (RFC 5389) with the NAT behaviour discovery attributes of RFC 5780, through
//! `stun_codec`: the requests a NAT probe sends and the facts a response carries.

use std::fmt;
use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{MappedAddress, Software, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::{ChangeRequest, OtherAddress, ResponseOrigin};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        XorMappedAddress,
        MappedAddress,
        ChangeRequest,
        OtherAddress,
        ResponseOrigin,
        Software
    ]
);

/// What a Binding request asks the server to change about its answer (RFC 5780 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Answer from the other port: tests address-dependent filtering.
    Port,
    /// Answer from the other address and port: tests endpoint-independent filtering.
    AddressAndPort,
}

/// The facts of a Binding success response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingResponse {
    pub transaction: [u8; 12],
    /// Our address as the server saw it (reflexive).
    pub mapped: SocketAddr,
    /// The server's alternate address, where it supports RFC 5780.
    pub other: Option<SocketAddr>,
    /// Where the server says it answered from.
    pub origin: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StunError {
    /// Not a STUN message, or a broken one.
    Malformed(String),
    /// A STUN message, but not a Binding success response.
    NotBindingSuccess,
    /// A Binding success without a mapped address.
    NoMappedAddress,
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StunError::Malformed(why) => write!(f, "malformed STUN message: {why}"),
            StunError::NotBindingSuccess => f.write_str("not a STUN Binding success response"),
            StunError::NoMappedAddress => f.write_str("STUN response without a mapped address"),
        }
    }
}

impl std::error::Error for StunError {}

/// A Binding request with `transaction` (the caller draws it at random).
pub fn binding_request(transaction: [u8; 12], change: Change) -> Vec<u8> {
    let mut message = Message::<Attribute>::new(
        MessageClass::Request,
        BINDING,
        TransactionId::new(transaction),
    );
    match change {
        Change::None => {}
        Change::Port => message.add_attribute(ChangeRequest::new(false, true)),
        Change::AddressAndPort => message.add_attribute(ChangeRequest::new(true, true)),
    }
    // Encoding a request built from valid attributes does not fail; an empty datagram would
    // simply go unanswered.
    MessageEncoder::new()
        .encode_into_bytes(message)
        .unwrap_or_default()
}

/// Reads a Binding success response.
pub fn parse_response(datagram: &[u8]) -> Result<BindingResponse, StunError> {
    let message = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(datagram)
        .map_err(|e| StunError::Malformed(format!("{:?}", e.kind())))?
        .map_err(|broken| StunError::Malformed(format!("{:?}", broken.error().kind())))?;
    if message.class() != MessageClass::SuccessResponse || message.method() != BINDING {
        return Err(StunError::NotBindingSuccess);
    }
    let mapped = message
        .get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .or_else(|| {
            message
                .get_attribute::<MappedAddress>()
                .map(|a| a.address())
        })
        .ok_or(StunError::NoMappedAddress)?;
    let mut transaction = [0u8; 12];
    transaction.copy_from_slice(message.transaction_id().as_bytes());
    Ok(BindingResponse {
        transaction,
        mapped,
        other: message.get_attribute::<OtherAddress>().map(|a| a.address()),
        origin: message
            .get_attribute::<ResponseOrigin>()
            .map(|a| a.address()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's answer, built the way a STUN server builds it.
    fn response(transaction: [u8; 12], mapped: &str, other: Option<&str>) -> Vec<u8> {
        let mut message = Message::<Attribute>::new(
            MessageClass::SuccessResponse,
            BINDING,
            TransactionId::new(transaction),
        );
        message.add_attribute(XorMappedAddress::new(mapped.parse().unwrap()));
        if let Some(other) = other {
            message.add_attribute(OtherAddress::new(other.parse().unwrap()));
        }
        MessageEncoder::new().encode_into_bytes(message).unwrap()
    }

    #[test]
    fn requests_carry_the_transaction_and_the_change_request() {
        let plain = binding_request([7; 12], Change::None);
        assert_eq!(&plain[..2], &[0, 1], "Binding request");
        assert_eq!(&plain[4..8], &[0x21, 0x12, 0xa4, 0x42], "magic cookie");
        assert_eq!(&plain[8..20], &[7; 12]);
        assert_eq!(plain.len(), 20, "no attributes");
        let change = binding_request([7; 12], Change::AddressAndPort);
        // CHANGE-REQUEST (0x0003), length 4, flags change-IP | change-port.
        assert_eq!(&change[20..], &[0, 3, 0, 4, 0, 0, 0, 6]);
        let port = binding_request([7; 12], Change::Port);
        assert_eq!(&port[20..], &[0, 3, 0, 4, 0, 0, 0, 2]);
    }

    #[test]
    fn responses_give_the_mapped_and_other_addresses() {
        let bytes = response([9; 12], "203.0.113.7:40000", Some("198.51.100.2:3479"));
        let r = parse_response(&bytes).unwrap();
        assert_eq!(r.transaction, [9; 12]);
        assert_eq!(r.mapped, "203.0.113.7:40000".parse().unwrap());
        assert_eq!(r.other, Some("198.51.100.2:3479".parse().unwrap()));
        let v6 = response([1; 12], "[2001:db8::7]:40000", None);
        assert_eq!(
            parse_response(&v6).unwrap().mapped,
            "[2001:db8::7]:40000".parse().unwrap()
        );
    }

    #[test]
    fn anything_else_is_an_error() {
        assert!(matches!(parse_response(b""), Err(StunError::Malformed(_))));
        assert!(matches!(
            parse_response(&[0u8; 64]),
            Err(StunError::Malformed(_))
        ));
        let request = binding_request([1; 12], Change::None);
        assert_eq!(parse_response(&request), Err(StunError::NotBindingSuccess));
        let mut truncated = response([9; 12], "203.0.113.7:40000", None);
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(
            parse_response(&truncated),
            Err(StunError::Malformed(_))
        ));
    }
}
