//! The name a verified client certificate gives its holder: what a
//! terminal uses as the user name when it takes the TLS identity for one
//! (MQTT's `use_identity_as_username`).
//!
//! The name is the subject's first common name (CN); a certificate
//! without one gives its first DNS name or e-mail address among the
//! subject alternative names, whichever comes first.
//!
//! A small DER walk rather than an X.509 crate: the certificate was
//! already parsed and verified by rustls (webpki) in the handshake, and
//! this reads two fields of it. x509-parser would bring nom, asn1-rs,
//! der-parser, oid-registry and time for that. The walk never panics:
//! whatever does not parse gives no name.

/// The common name's object identifier, 2.5.4.3 (contents of the OID).
const CN: &[u8] = &[0x55, 0x04, 0x03];
/// Subject alternative names, 2.5.29.17.
const SAN: &[u8] = &[0x55, 0x1d, 0x11];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT` in TBSCertificate: the extensions.
const EXTENSIONS: u8 = 0xa3;
/// GeneralName `[1] rfc822Name` and `[2] dNSName` (IA5, implicit).
const EMAIL: u8 = 0x81;
const DNS: u8 = 0x82;

/// The user name in a DER certificate (see the module's docs); `None` if
/// it has none, it is empty or holds control characters, or the DER does
/// not parse.
pub fn user_name(der: &[u8]) -> Option<String> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    // version [0] (optional), serial, signature, issuer, validity.
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (subject, rest) = expect(tbs, SEQUENCE)?;
    let name = common_name(subject).or_else(|| alt_name(rest));
    name.filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
}

/// The first CN of a Name (a SEQUENCE of SETs of attribute SEQUENCEs).
fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (mut set, rest) = expect(name, SET)?;
        name = rest;
        while !set.is_empty() {
            let (attribute, more) = expect(set, SEQUENCE)?;
            set = more;
            let (oid, value) = expect(attribute, OID)?;
            if oid == CN {
                let (tag, text, _) = element(value)?;
                return string(tag, text);
            }
        }
    }
    None
}

/// The first DNS name or e-mail address in the subject alternative names,
/// from what follows the subject in TBSCertificate.
fn alt_name(mut tbs: &[u8]) -> Option<String> {
    while !tbs.is_empty() {
        let (tag, content, rest) = element(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (mut extensions, _) = expect(content, SEQUENCE)?;
        while !extensions.is_empty() {
            let (extension, more) = expect(extensions, SEQUENCE)?;
            extensions = more;
            let (oid, mut rest) = expect(extension, OID)?;
            if oid != SAN {
                continue;
            }
            if rest.first() == Some(&0x01) {
                // critical: BOOLEAN
                rest = element(rest)?.2;
            }
            let (value, _) = expect(rest, OCTET_STRING)?;
            let (mut names, _) = expect(value, SEQUENCE)?;
            while !names.is_empty() {
                let (tag, text, more) = element(names)?;
                names = more;
                if tag == DNS || tag == EMAIL {
                    return std::str::from_utf8(text).ok().map(str::to_owned);
                }
            }
            return None;
        }
    }
    None
}

/// A directory string's text: UTF8String, PrintableString, IA5String,
/// TeletexString (when it is UTF-8) or BMPString (UTF-16).
fn string(tag: u8, text: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(text).ok().map(str::to_owned),
        0x1e if text.len() % 2 == 0 => {
            let units = text.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// The element at the start of `input` if its tag is `tag`: its contents
/// and what follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = element(input)?;
    (t == tag).then_some((content, rest))
}

/// The element at the start of `input`: its tag, contents, and what
/// follows it. Only low tag numbers (all X.509 uses) and definite lengths
/// of up to four bytes (DER).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| len << 8 | b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn der(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_else_the_first_dns_or_email_alternative_name() {
        let mut p = CertificateParams::new(vec!["host.example".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::OrganizationName, "Org");
        p.distinguished_name.push(DnType::CommonName, "alice");
        assert_eq!(user_name(&der(p)).as_deref(), Some("alice"));

        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = vec![
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::Rfc822Name("bob@example.org".try_into().unwrap()),
            SanType::DnsName("bob.example".try_into().unwrap()),
        ];
        assert_eq!(user_name(&der(p)).as_deref(), Some("bob@example.org"));

        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        assert_eq!(user_name(&der(p)), None);
    }

    #[test]
    fn bad_der_gives_no_name_and_no_panic() {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "alice");
        let good = der(p);
        for cut in 0..good.len() {
            let _ = user_name(&good[..cut]);
        }
        let mut flipped = good.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = user_name(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(user_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(user_name(&[]), None);
    }
}
