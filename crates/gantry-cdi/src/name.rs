//! CDI kinds (`vendor.com/class`) and qualified device names (`vendor.com/class=name`), validated once here.
//!
//! The grammar is the CDI specification's: a vendor is a DNS-like name, a class is `[A-Za-z0-9][A-Za-z0-9_.-]*`
//! (length ≤ 63 each), and a device name is `[A-Za-z0-9][A-Za-z0-9_.:-]*`. Nothing valid here can carry a `/`,
//! so no name can become a path trick (`../`, an absolute path).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// A CDI kind such as `nvidia.com/gpu`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind {
    vendor: String,
    class: String,
}

impl Kind {
    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    pub fn class(&self) -> &str {
        &self.class
    }

    /// A file name for this kind's spec, such as `nvidia.com-gpu` (without extension).
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.vendor, self.class)
    }
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn check_vendor(vendor: &str) -> Result<(), &'static str> {
    if vendor.is_empty() || vendor.len() > 63 {
        return Err("the vendor must be 1 to 63 characters");
    }
    let bytes = vendor.as_bytes();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("the vendor must start and end with a letter or digit");
    }
    if !bytes.iter().all(|&b| alnum(b) || b == b'.' || b == b'-') {
        return Err("the vendor may hold only letters, digits, '.' and '-'");
    }
    if vendor.contains("..") {
        return Err("the vendor may not contain '..'");
    }
    Ok(())
}

fn check_class(class: &str) -> Result<(), &'static str> {
    if class.is_empty() || class.len() > 63 {
        return Err("the class must be 1 to 63 characters");
    }
    let bytes = class.as_bytes();
    if !alnum(bytes[0]) {
        return Err("the class must start with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|&b| alnum(b) || b == b'_' || b == b'.' || b == b'-')
    {
        return Err("the class may hold only letters, digits, '_', '.' and '-'");
    }
    if class.contains("..") {
        return Err("the class may not contain '..'");
    }
    Ok(())
}

/// Checks a device name (the part after `=`): `[A-Za-z0-9][A-Za-z0-9_.:-]*`, no `..`.
pub fn check_device_name(name: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidDeviceName {
        value: name.to_owned(),
        reason,
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if bytes.len() > 255 {
        return Err(invalid("the name is longer than 255 characters"));
    }
    if !alnum(bytes[0]) {
        return Err(invalid(
            "a device name must start with a letter or digit (no '/', '.' or '-')",
        ));
    }
    if !bytes
        .iter()
        .all(|&b| alnum(b) || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(invalid(
            "a device name may hold only letters, digits, '_', '.', ':' and '-' (no '/')",
        ));
    }
    if name.contains("..") {
        return Err(invalid("a device name may not contain '..'"));
    }
    Ok(())
}

impl FromStr for Kind {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidKind {
            value: value.to_owned(),
            reason,
        };
        let (vendor, class) = value
            .split_once('/')
            .ok_or_else(|| invalid("there is no '/' between vendor and class"))?;
        check_vendor(vendor).map_err(invalid)?;
        check_class(class).map_err(invalid)?;
        Ok(Self {
            vendor: vendor.to_owned(),
            class: class.to_owned(),
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vendor, self.class)
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A fully qualified CDI device name, `vendor.com/class=name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    pub kind: Kind,
    pub name: String,
}

impl QualifiedName {
    pub fn new(kind: Kind, name: &str) -> Result<Self> {
        check_device_name(name)?;
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }
}

impl FromStr for QualifiedName {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        let value = value.trim();
        let (kind, name) = value
            .split_once('=')
            .ok_or_else(|| Error::InvalidDeviceName {
                value: value.to_owned(),
                reason: "expected VENDOR/CLASS=NAME such as nvidia.com/gpu=0",
            })?;
        Self::new(kind.parse()?, name)
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn good_names_parse() {
        for text in [
            "nvidia.com/gpu=0",
            "nvidia.com/gpu=all",
            "nvidia.com/gpu=GPU-7400b002-0000-4000-8002-0e0461448dde",
            "nvidia.com/gpu=0:1",
            "test-ab12.gantry.dev/gpu=1",
            "vendor.com/class_x=a_b.c",
        ] {
            let name: QualifiedName = text.parse().unwrap();
            assert_eq!(name.to_string(), text);
        }
    }

    #[test]
    fn path_tricks_and_garbage_are_rejected() {
        for text in [
            "nvidia.com/gpu=../../etc/passwd",
            "nvidia.com/gpu=/dev/sda",
            "nvidia.com/gpu=..",
            "nvidia.com/gpu=0/../1",
            "nvidia.com/../gpu=0",
            "../nvidia.com/gpu=0",
            "/etc/cdi/gpu=0",
            "nvidia.com/gpu=",
            "nvidia.com/gpu",
            "nvidia.com=0",
            "nvidia.com/gpu=a b",
            "nvidia.com/gpu=.hidden",
            "=0",
            "nvidia..com/gpu=0",
        ] {
            assert!(
                text.parse::<QualifiedName>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn kind_errors_say_what_to_write() {
        let err = "nvidia.com".parse::<Kind>().unwrap_err().to_string();
        assert!(err.contains("VENDOR/CLASS"), "{err}");
    }

    proptest! {
        #[test]
        fn valid_names_never_hold_path_separators(text in ".{0,40}") {
            if let Ok(name) = text.parse::<QualifiedName>() {
                prop_assert!(!name.name.contains('/'));
                prop_assert!(!name.name.contains(".."));
                prop_assert!(!name.kind.class().contains('/'));
            }
        }
    }
}
