//! Party join codes: 80 random bits that players read out to each other.
//!
//! Shown as Crockford base32 (<https://www.crockford.com/base32.html>) because it survives being
//! spoken and retyped: no U, and the look-alikes O, I and L are read as 0, 1 and 1 on input.
//! 80 bits are exactly 16 digits, so every 16-digit string is one code and there is no
//! non-canonical spelling to worry about.

use std::fmt;
use std::hint::black_box;
use std::str::FromStr;

/// Crockford's digit set, in value order.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Digits in a code, separators not counted.
const DIGITS: usize = 16;

/// Digits per dash-separated group in the displayed form.
const GROUP: usize = 4;

/// Displayed length: 16 digits plus three dashes.
const DISPLAY_LEN: usize = DIGITS + DIGITS / GROUP - 1;

/// The secret that grants membership of a party.
///
/// Guesses are compared in constant time, `==` included, so that neither a direct check nor a
/// map lookup tells an attacker how much of a guess was right; look them up in a map with a
/// secret hash key such as std's `HashMap`. `Ord` is left out on purpose: an ordered map would
/// leak by the path its search takes.
#[derive(Clone, Copy, Eq)]
pub struct PartyCode([u8; PartyCode::BYTES]);

impl PartialEq for PartyCode {
    fn eq(&self, other: &PartyCode) -> bool {
        self.matches(other)
    }
}

/// The bytes, as `==` compares them: equal codes hash alike.
impl std::hash::Hash for PartyCode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartyCode {
    /// Length of a code in bytes: 80 bits, all random.
    pub const BYTES: usize = 10;

    /// Wraps bytes the caller drew from a CSPRNG; this module takes no RNG so it stays sans-IO.
    pub const fn from_bytes(bytes: [u8; Self::BYTES]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; Self::BYTES] {
        &self.0
    }

    /// Constant-time equality, for checking a guess without leaking how close it was.
    pub fn matches(&self, other: &PartyCode) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff = black_box(diff | (a ^ b));
        }
        black_box(diff) == 0
    }

    /// The 80 bits as one big-endian integer, so each digit is a 5-bit shift away.
    fn to_bits(self) -> u128 {
        self.0
            .iter()
            .fold(0u128, |acc, &byte| (acc << 8) | u128::from(byte))
    }

    fn from_bits(bits: u128) -> Self {
        // Truncating casts keep one byte each; the code is the low 80 bits.
        Self(std::array::from_fn(|i| {
            (bits >> (8 * (Self::BYTES - 1 - i))) as u8
        }))
    }
}

impl fmt::Display for PartyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.to_bits();
        let mut out = [b'-'; DISPLAY_LEN];
        let slots = out
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| i % (GROUP + 1) != GROUP);
        for (digit, (_, slot)) in slots.enumerate() {
            let shift = 5 * (DIGITS - 1 - digit);
            let value = (bits >> shift) & 0x1f;
            // `value` is masked to 0..32, the alphabet's length.
            *slot = ALPHABET[value as usize];
        }
        // Only ASCII was written, so this cannot fail; `pad` honours width and alignment.
        f.pad(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// Never prints the code: it grants membership, and `Debug` output ends up in logs.
impl fmt::Debug for PartyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartyCode(..)")
    }
}

/// Why a typed code was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeError {
    /// The input had `found` digits (dashes and spaces not counted) instead of 16.
    WrongLength { found: usize },
    /// `ch` is not a Crockford base32 digit. `position` counts characters of the input as typed,
    /// from 1 and including separators, so it matches what the player sees.
    InvalidChar { ch: char, position: usize },
}

impl fmt::Display for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength { found } => write!(
                f,
                "party code has {found} characters, expected {DIGITS} (dashes and spaces not counted)"
            ),
            Self::InvalidChar { ch, position } => write!(
                f,
                "invalid character {ch:?} at position {position} of party code \
                 (expected 0-9 or a letter other than U)"
            ),
        }
    }
}

impl std::error::Error for CodeError {}

impl FromStr for PartyCode {
    type Err = CodeError;

    fn from_str(input: &str) -> Result<Self, CodeError> {
        let mut bits = 0u128;
        let mut found = 0usize;
        for (index, ch) in input.chars().enumerate() {
            if ch == '-' || ch == ' ' {
                continue;
            }
            let value = digit_value(ch).ok_or(CodeError::InvalidChar {
                ch,
                position: index + 1,
            })?;
            // Past 16 digits keep counting for the error message, but stop shifting.
            if found < DIGITS {
                bits = (bits << 5) | u128::from(value);
            }
            found += 1;
        }
        if found != DIGITS {
            return Err(CodeError::WrongLength { found });
        }
        Ok(Self::from_bits(bits))
    }
}

/// Crockford decoding: case-insensitive, with O read as 0 and I, L read as 1.
fn digit_value(ch: char) -> Option<u8> {
    let value = match ch.to_ascii_uppercase() {
        c @ '0'..='9' => c as u8 - b'0',
        'O' => 0,
        'I' | 'L' => 1,
        c @ 'A'..='H' => c as u8 - b'A' + 10,
        'J' => 18,
        'K' => 19,
        'M' => 20,
        'N' => 21,
        c @ 'P'..='T' => c as u8 - b'P' + 22,
        c @ 'V'..='Z' => c as u8 - b'V' + 27,
        _ => return None,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift64 so the round-trip test needs no RNG crate.
    fn xorshift_bytes(state: &mut u64) -> [u8; PartyCode::BYTES] {
        let mut bytes = [0u8; PartyCode::BYTES];
        for byte in &mut bytes {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *byte = (*state >> 24) as u8;
        }
        bytes
    }

    fn round_trip(bytes: [u8; PartyCode::BYTES]) {
        let code = PartyCode::from_bytes(bytes);
        let text = code.to_string();
        assert_eq!(text.parse::<PartyCode>(), Ok(code), "{text}");
        assert_eq!(code.as_bytes(), &bytes);
    }

    fn sample() -> PartyCode {
        PartyCode::from_bytes([0x3a, 0x7f, 0x01, 0xc4, 0x99, 0x10, 0xee, 0x5b, 0x02, 0x86])
    }

    #[test]
    fn round_trips_edge_patterns() {
        round_trip([0; PartyCode::BYTES]);
        round_trip([0xff; PartyCode::BYTES]);
        round_trip(std::array::from_fn(|i| i as u8));
        round_trip(std::array::from_fn(|i| 0x80 >> (i % 8)));
    }

    #[test]
    fn round_trips_pseudo_random() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1000 {
            round_trip(xorshift_bytes(&mut state));
        }
    }

    #[test]
    fn every_alphabet_digit_decodes_to_its_index() {
        for (index, &ch) in ALPHABET.iter().enumerate() {
            assert_eq!(digit_value(char::from(ch)), Some(index as u8));
            assert_eq!(
                digit_value(char::from(ch).to_ascii_lowercase()),
                Some(index as u8)
            );
        }
    }

    #[test]
    fn known_encodings() {
        let zero = PartyCode::from_bytes([0; PartyCode::BYTES]);
        assert_eq!(zero.to_string(), "0000-0000-0000-0000");
        let ones = PartyCode::from_bytes([0xff; PartyCode::BYTES]);
        assert_eq!(ones.to_string(), "ZZZZ-ZZZZ-ZZZZ-ZZZZ");
        let mut low = [0; PartyCode::BYTES];
        low[PartyCode::BYTES - 1] = 1;
        assert_eq!(
            PartyCode::from_bytes(low).to_string(),
            "0000-0000-0000-0001"
        );
        let mut high = [0; PartyCode::BYTES];
        high[0] = 0x80;
        assert_eq!(
            PartyCode::from_bytes(high).to_string(),
            "G000-0000-0000-0000"
        );
    }

    #[test]
    fn display_is_four_groups_of_four() {
        let text = sample().to_string();
        let groups: Vec<&str> = text.split('-').collect();
        assert_eq!(groups.len(), 4, "{text}");
        for group in groups {
            assert_eq!(group.len(), 4, "{text}");
            assert!(group.bytes().all(|b| ALPHABET.contains(&b)), "{text}");
        }
        assert_eq!(format!("{:>21}", sample()), format!("  {text}"));
    }

    #[test]
    fn parsing_is_forgiving() {
        let code = sample();
        let text = code.to_string();
        let bare: String = text.chars().filter(|&c| c != '-').collect();
        let spaced = text.replace('-', " ");
        for input in [
            text.to_lowercase(),
            bare.clone(),
            bare.to_lowercase(),
            spaced,
            format!("  {text}  "),
            format!("{}--{}", &bare[..8], &bare[8..]),
        ] {
            assert_eq!(input.parse::<PartyCode>(), Ok(code), "{input:?}");
        }
    }

    #[test]
    fn parsing_maps_look_alikes() {
        let zero = PartyCode::from_bytes([0; PartyCode::BYTES]);
        assert_eq!("OOOO-oooo-0O0o-0000".parse::<PartyCode>(), Ok(zero));
        let ones: PartyCode = "1111-1111-1111-1111".parse().unwrap();
        assert_eq!("IiLl-1111-1111-1111".parse::<PartyCode>(), Ok(ones));
    }

    #[test]
    fn rejects_wrong_length() {
        assert_eq!(
            "7K3M-Q9XA-2BCD-EF4".parse::<PartyCode>(),
            Err(CodeError::WrongLength { found: 15 })
        );
        assert_eq!(
            "7K3M-Q9XA-2BCD-EF4G-H".parse::<PartyCode>(),
            Err(CodeError::WrongLength { found: 17 })
        );
        assert_eq!(
            "".parse::<PartyCode>(),
            Err(CodeError::WrongLength { found: 0 })
        );
        assert_eq!(
            " - - ".parse::<PartyCode>(),
            Err(CodeError::WrongLength { found: 0 })
        );
        let message = CodeError::WrongLength { found: 15 }.to_string();
        assert!(
            message.contains("15") && message.contains("16"),
            "{message}"
        );
    }

    #[test]
    fn rejects_invalid_characters() {
        assert_eq!(
            "7K3M-U9XA-2BCD-EF4G".parse::<PartyCode>(),
            Err(CodeError::InvalidChar {
                ch: 'U',
                position: 6
            })
        );
        assert_eq!(
            "7k3m-q9xa-2bcd-ef4u".parse::<PartyCode>(),
            Err(CodeError::InvalidChar {
                ch: 'u',
                position: 19
            })
        );
        assert_eq!(
            "!K3M-Q9XA-2BCD-EF4G".parse::<PartyCode>(),
            Err(CodeError::InvalidChar {
                ch: '!',
                position: 1
            })
        );
        // Position counts characters, not bytes, so multi-byte input reports where it is seen.
        assert_eq!(
            "éé3M-Q9XA-2BCD-EF4G".parse::<PartyCode>(),
            Err(CodeError::InvalidChar {
                ch: 'é',
                position: 1
            })
        );
        assert_eq!(
            "7Ké".parse::<PartyCode>(),
            Err(CodeError::InvalidChar {
                ch: 'é',
                position: 3
            })
        );
        assert_eq!(
            "7K3M\tQ9XA".parse::<PartyCode>(),
            Err(CodeError::InvalidChar {
                ch: '\t',
                position: 5
            })
        );
        let message = CodeError::InvalidChar {
            ch: 'U',
            position: 6,
        }
        .to_string();
        assert!(
            message.contains("'U'") && message.contains('6'),
            "{message}"
        );
    }

    #[test]
    fn debug_hides_the_code() {
        let code = sample();
        let debug = format!("{code:?} {code:#?}");
        assert_eq!(debug, "PartyCode(..) PartyCode(..)");
        let text = code.to_string();
        for group in text.split('-') {
            assert!(!debug.contains(group), "{debug}");
        }
    }

    #[test]
    fn matches_compares_every_byte() {
        let code = sample();
        assert!(code.matches(&code));
        assert!(code.matches(&PartyCode::from_bytes(*code.as_bytes())));
        for index in 0..PartyCode::BYTES {
            for bit in 0..8 {
                let mut bytes = *code.as_bytes();
                bytes[index] ^= 1 << bit;
                let other = PartyCode::from_bytes(bytes);
                assert!(!code.matches(&other), "byte {index} bit {bit}");
                assert!(!other.matches(&code), "byte {index} bit {bit}");
            }
        }
    }
}
