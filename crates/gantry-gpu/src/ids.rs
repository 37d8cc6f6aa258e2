//! Identifiers that arrive from outside (driver files, NVML, YAML) and are validated once, here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// A PCI address, normalised to the 4-hex-digit domain form `0000:17:00.0` (lower case).
///
/// NVML reports an 8-digit domain (`00000000:17:00.0`), `/proc` and `/sys` a 4-digit one, and some tools
/// omit the domain; all of them parse to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciBusId {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

impl PciBusId {
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Result<Self, Error> {
        if device > 0x1f || function > 7 || domain > 0xffff {
            return Err(Error::InvalidPciBusId {
                value: format!("{domain:x}:{bus:02x}:{device:02x}.{function:x}"),
            });
        }
        Ok(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    pub fn domain(&self) -> u32 {
        self.domain
    }

    pub fn bus(&self) -> u8 {
        self.bus
    }
}

impl FromStr for PciBusId {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidPciBusId {
            value: value.to_owned(),
        };
        let text = value.trim();
        let parts: Vec<&str> = text.split(':').collect();
        let (domain, bus, rest) = match parts.as_slice() {
            [domain, bus, rest] => (*domain, *bus, *rest),
            [bus, rest] => ("0", *bus, *rest),
            _ => return Err(invalid()),
        };
        let (device, function) = rest.split_once('.').ok_or_else(invalid)?;
        let hex = |s: &str, max_len: usize| -> Result<u32, Error> {
            if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            u32::from_str_radix(s, 16).map_err(|_| invalid())
        };
        let domain = hex(domain, 8)?;
        let bus = u8::try_from(hex(bus, 2)?).map_err(|_| invalid())?;
        let device = u8::try_from(hex(device, 2)?).map_err(|_| invalid())?;
        let function = u8::try_from(hex(function, 1)?).map_err(|_| invalid())?;
        PciBusId::new(domain, bus, device, function).map_err(|_| invalid())
    }
}

impl fmt::Display for PciBusId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciBusId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciBusId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A GPU (`GPU-…`) or MIG device (`MIG-…`) UUID as NVML and the driver print it.
///
/// Only hex digits and dashes may follow the prefix, so a UUID can never carry a path separator or `..`
/// into a device name, a file name or a CDI spec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceUuid(String);

impl DeviceUuid {
    /// Parses a full GPU UUID (`GPU-` prefix).
    pub fn gpu(value: &str) -> Result<Self, Error> {
        Self::with_prefix(value, "GPU")
    }

    /// Parses a MIG device UUID (`MIG-` prefix).
    pub fn mig(value: &str) -> Result<Self, Error> {
        Self::with_prefix(value, "MIG")
    }

    fn with_prefix(value: &str, prefix: &'static str) -> Result<Self, Error> {
        let text = value.trim();
        let body = text
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .filter(|body| {
                !body.is_empty()
                    && body.len() <= 64
                    && body.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
                    && body.bytes().any(|b| b.is_ascii_hexdigit())
            })
            .ok_or_else(|| Error::InvalidUuid {
                value: value.to_owned(),
                prefix,
            })?;
        Ok(Self(format!("{prefix}-{}", body.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_mig(&self) -> bool {
        self.0.starts_with("MIG-")
    }
}

impl fmt::Display for DeviceUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceUuid {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        if value.trim_start().starts_with("MIG") {
            Self::mig(value)
        } else {
            Self::gpu(value)
        }
    }
}

impl Serialize for DeviceUuid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceUuid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pci_bus_id_forms_normalise_to_one_value() {
        for text in [
            "00000000:17:00.0",
            "0000:17:00.0",
            "17:00.0",
            "0000:17:00.0\n",
        ] {
            let id: PciBusId = text.parse().unwrap();
            assert_eq!(id.to_string(), "0000:17:00.0", "from {text:?}");
        }
        let upper: PciBusId = "0000:AF:1F.7".parse().unwrap();
        assert_eq!(upper.to_string(), "0000:af:1f.7");
    }

    #[test]
    fn pci_bus_id_rejects_garbage() {
        for text in [
            "",
            "17:00",
            "zz:00.0",
            "0000:17:00.8",
            "0000:17:20.0",
            "0000:100:00.0",
            "a:b:c:d",
        ] {
            assert!(
                text.parse::<PciBusId>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn uuid_rejects_path_tricks() {
        for text in [
            "GPU-../../etc",
            "GPU-",
            "GPU-12/34",
            "gpu-1234",
            "MIG-ab",
            "GPU-a b",
        ] {
            assert!(
                DeviceUuid::gpu(text).is_err(),
                "{text:?} should be rejected"
            );
        }
        assert!(DeviceUuid::mig("MIG-4b3a2c1d-0000-1111-2222-333344445555").is_ok());
        assert!(
            DeviceUuid::gpu("GPU-4B3A2C1D-0000-1111-2222-333344445555")
                .unwrap()
                .as_str()
                == "GPU-4b3a2c1d-0000-1111-2222-333344445555"
        );
    }

    proptest! {
        #[test]
        fn pci_bus_id_round_trips(domain in 0u32..=0xffff, bus: u8, device in 0u8..32, function in 0u8..8) {
            let id = PciBusId::new(domain, bus, device, function).unwrap();
            let parsed: PciBusId = id.to_string().parse().unwrap();
            prop_assert_eq!(parsed, id);
            let nvml_form = format!("{:08x}:{:02x}:{:02x}.{:x}", domain, bus, device, function);
            prop_assert_eq!(nvml_form.parse::<PciBusId>().unwrap(), id);
        }

        #[test]
        fn uuid_parse_never_panics(text in ".{0,80}") {
            let _ = text.parse::<DeviceUuid>();
        }
    }
}
