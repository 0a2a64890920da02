//! The data document the policies read: `data.mlguard.config` and `data.mlguard.cluster`.
//! Built in one place for the compiler (config only), the evaluators and the Rego unit tests.

use regorus::Value;

/// Sets `key` of a regorus object; a no-op on anything else.
pub(crate) fn insert(object: &mut Value, key: &str, value: Value) {
    if let Ok(map) = object.as_object_mut() {
        map.insert(Value::from(key), value);
    }
}

/// `{"mlguard": {"config": config, "cluster": cluster}}`, without `cluster` when it is `None`.
pub(crate) fn document(config: Value, cluster: Option<Value>) -> Value {
    let mut mlguard = Value::new_object();
    insert(&mut mlguard, "config", config);
    if let Some(cluster) = cluster {
        insert(&mut mlguard, "cluster", cluster);
    }
    let mut data = Value::new_object();
    insert(&mut data, "mlguard", mlguard);
    data
}
