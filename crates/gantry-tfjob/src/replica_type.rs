//! The five TFJob replica types and their case-insensitive names.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A TFJob replica type. The manifest key is matched case-insensitively (`ps`, `Ps` and `PS` are all
/// [`ReplicaType::Ps`]), as Kubeflow's defaulting does; it is always written back in Kubeflow's spelling.
///
/// The order (`Chief`, `Evaluator`, `Master`, `PS`, `Worker`) is the order in which Kubeflow's status
/// update walks the types; maps keyed by `ReplicaType` iterate in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplicaType {
    Chief,
    Evaluator,
    Master,
    Ps,
    Worker,
}

impl ReplicaType {
    /// Every replica type, in status-update order.
    pub const ALL: [ReplicaType; 5] = [
        ReplicaType::Chief,
        ReplicaType::Evaluator,
        ReplicaType::Master,
        ReplicaType::Ps,
        ReplicaType::Worker,
    ];

    /// Kubeflow's spelling, used as the `tfReplicaSpecs` and `replicaStatuses` key.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaType::Chief => "Chief",
            ReplicaType::Evaluator => "Evaluator",
            ReplicaType::Master => "Master",
            ReplicaType::Ps => "PS",
            ReplicaType::Worker => "Worker",
        }
    }

    /// The lower-case form used in pod names, the `replica-type` label and `TF_CONFIG` (`master` for Master).
    pub fn lower(self) -> &'static str {
        match self {
            ReplicaType::Chief => "chief",
            ReplicaType::Evaluator => "evaluator",
            ReplicaType::Master => "master",
            ReplicaType::Ps => "ps",
            ReplicaType::Worker => "worker",
        }
    }

    /// Parses a replica type name, ignoring ASCII case.
    pub fn parse(name: &str) -> Option<ReplicaType> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }

    /// Chief or Master: the replica whose success is the job's success when present.
    pub fn is_chief_or_master(self) -> bool {
        matches!(self, ReplicaType::Chief | ReplicaType::Master)
    }
}

impl fmt::Display for ReplicaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ReplicaType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReplicaType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = Cow::<'de, str>::deserialize(deserializer)?;
        ReplicaType::parse(&name).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown replica type `{name}`: expected one of PS, Worker, Chief, Master, Evaluator"
            ))
        })
    }
}

impl schemars::JsonSchema for ReplicaType {
    fn schema_name() -> Cow<'static, str> {
        "ReplicaType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

/// Deserialises a map keyed by replica type, refusing two keys that name the same type in different
/// case (`ps` and `PS`), which a plain map would silently merge.
pub(crate) fn deserialize_replica_map<'de, D, V>(
    deserializer: D,
) -> Result<BTreeMap<ReplicaType, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct MapVisitor<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
        type Value = BTreeMap<ReplicaType, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "a map from replica type (PS, Worker, Chief, Master, Evaluator) to its spec",
            )
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<ReplicaType>()? {
                let value = map.next_value::<V>()?;
                if out.insert(key, value).is_some() {
                    return Err(de::Error::custom(format!(
                        "replica type {key} is given twice (keys are case-insensitive)"
                    )));
                }
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case() {
        for (name, want) in [
            ("ps", ReplicaType::Ps),
            ("PS", ReplicaType::Ps),
            ("Ps", ReplicaType::Ps),
            ("worker", ReplicaType::Worker),
            ("WORKER", ReplicaType::Worker),
            ("chief", ReplicaType::Chief),
            ("master", ReplicaType::Master),
            ("evaluator", ReplicaType::Evaluator),
            ("EvAlUaToR", ReplicaType::Evaluator),
        ] {
            assert_eq!(ReplicaType::parse(name), Some(want), "{name}");
        }
        assert_eq!(ReplicaType::parse("launcher"), None);
        assert_eq!(ReplicaType::parse("eval"), None);
    }

    #[test]
    fn lower_case_forms_follow_kubeflow() {
        let lower: Vec<_> = ReplicaType::ALL.iter().map(|t| t.lower()).collect();
        assert_eq!(lower, ["chief", "evaluator", "master", "ps", "worker"]);
        assert_eq!(ReplicaType::Ps.as_str(), "PS");
    }
}
